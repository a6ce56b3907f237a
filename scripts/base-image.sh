#!/usr/bin/env bash
# Make the local base image that submission images build FROM when the templates' default base
# (a python:3.11 image pinned by digest) cannot be pulled, as on machines with no Docker Hub.
# Debian bookworm (Python 3.11) + venv + pip + this host's CA bundle, so that pip inside
# `docker build` trusts the same TLS proxy the host does. Idempotent: an existing image is kept.
#   usage: scripts/base-image.sh [IMAGE]     (default: harness-base:bookworm)
set -euo pipefail

image=${1:-harness-base:bookworm}
label=org.harness.managed=base

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap is missing (scripts/docker-engine.sh installs it as root)" >&2
    exit 3
}
rootfs=$(mktemp -d /tmp/harness-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap bookworm into $rootfs (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/tmp/harness-debootstrap.log 2>&1 || {
    tail -n 20 /tmp/harness-debootstrap.log >&2
    exit 1
}
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL $label" \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >/dev/null
echo "base-image: created $image"
