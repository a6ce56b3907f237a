#!/usr/bin/env bash
# The one way an environment is installed from lockfiles/: nothing is ever resolved against the
# index, so a release that appears after a lock was made cannot change or break the install.
#   1. the venv is created when missing (with $PYTHON, default python3.11);
#   2. the pip the first lock pins is installed, with its hash: the same pip everywhere, not the
#      one the machine's Python happens to bundle;
#   3. each --first SPEC is installed by name, with its dependencies: only for torch, whose build
#      (CPU or CUDA) is the machine's and is therefore left out of the locks (see lockfiles/dev.in);
#   4. every LOCK, in order, with --require-hashes --no-deps: exactly the pinned versions;
#   5. `pip check`: a lock that misses a package something needs fails here, naming it; except a
#      package named by --allow-missing, declared but never imported (crfm-helm's torch).
#   usage: scripts/install-lock.sh [--first SPEC]... [--allow-missing NAME]... VENV LOCK [LOCK...]
# pip's own environment variables apply (PIP_NO_INDEX, PIP_FIND_LINKS, PIP_CONFIG_FILE, ...).
set -euo pipefail

usage() {
    echo "usage: scripts/install-lock.sh [--first SPEC]... [--allow-missing NAME]... VENV LOCK [LOCK...]" >&2
    exit 2
}
first=()
allowed='^No broken requirements found\.$'
while [[ ${1:-} == --* ]]; do
    (($# >= 2)) || usage
    case $1 in
    --first) first+=("$2") ;;
    --allow-missing) allowed+="|requires $2, which is not installed\.$" ;;
    *) usage ;;
    esac
    shift 2
done
(($# >= 2)) || usage
venv=$1
shift
locks=("$@")
for lock in "${locks[@]}"; do
    [[ -f $lock ]] || {
        echo "install-lock: no lockfile $lock" >&2
        exit 2
    }
done

# The pinned pip: its requirement line and the hash lines that follow it, from the first lock.
pip_pin=$(awk '/^pip==/ {on=1} on {print} on && !/\\$/ {exit}' "${locks[0]}")
if [[ -z $pip_pin ]]; then
    echo "install-lock: ${locks[0]} pins no pip: recompile it with \`make lock\` (pip-compile --allow-unsafe)" >&2
    exit 2
fi

test -x "$venv/bin/python" || "${PYTHON:-python3.11}" -m venv "$venv"
py=$venv/bin/python
pin_file=$(mktemp)
trap 'rm -f "$pin_file"' EXIT
printf '%s\n' "$pip_pin" | grep -v '^ *#' >"$pin_file"
"$py" -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r "$pin_file"
if ((${#first[@]})); then
    "$py" -m pip install -q "${first[@]}"
fi
for lock in "${locks[@]}"; do
    "$py" -m pip install -q --require-hashes --no-deps -r "$lock"
done
problems=$("$py" -m pip check 2>&1 | grep -Ev "$allowed" || true)
if [[ -n $problems ]]; then
    echo "install-lock: $venv is incomplete or inconsistent: ${locks[*]} miss or mis-pin a package" >&2
    echo "$problems" >&2
    exit 1
fi
