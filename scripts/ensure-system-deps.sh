#!/bin/sh
# Install the few Debian packages Sealroom itself needs (openssl, python3-venv), only when
# missing. What only the tests need is scripts/ensure-test-deps.sh's job.
# Runs apt-get only as root; otherwise says what to install.
set -eu
missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "please install:$missing  (sudo apt-get install$missing)" >&2
    exit 1
fi
