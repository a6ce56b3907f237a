#!/usr/bin/env bash
# Make a headless browser available for the browser tests: Debian's chromium and chromium-driver
# (nothing downloaded from anywhere else). Nothing to do when both are installed; otherwise, as
# root, install them from Debian's archive. Idempotent; exits 3 when they cannot be had.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x $CHROMIUM && -x $CHROMEDRIVER ]]; then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "chromium: $CHROMIUM or $CHROMEDRIVER is missing and this is not root: install Debian's chromium and chromium-driver." >&2
    exit 3
fi
echo "chromium: installing chromium and chromium-driver from Debian's archive"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
if [[ ! -x $CHROMIUM || ! -x $CHROMEDRIVER ]]; then
    echo "chromium: installed, yet $CHROMIUM or $CHROMEDRIVER is still missing" >&2
    exit 3
fi
