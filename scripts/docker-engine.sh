#!/usr/bin/env bash
# Make a Docker engine reachable: nothing to do when `docker info` answers; otherwise, as root,
# install docker.io (and debootstrap, for scripts/base-image.sh) from Debian's archive and start
# dockerd in the background. Idempotent; exits 3 when no engine can be had.
set -euo pipefail

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if engine_up; then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "docker-engine: no Docker engine is reachable and this is not root: start one, or run as root." >&2
    exit 3
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "docker-engine: installing docker.io and debootstrap from Debian's archive"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io debootstrap iptables >/dev/null
fi
if ! pgrep -x dockerd >/dev/null; then
    echo "docker-engine: starting dockerd (log: /var/log/dockerd.log)"
    nohup setsid dockerd --storage-driver overlay2 >/var/log/dockerd.log 2>&1 &
fi
for _ in $(seq 60); do
    engine_up && exit 0
    sleep 1
done
echo "docker-engine: dockerd did not answer within 60 s; last lines of /var/log/dockerd.log:" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 3
