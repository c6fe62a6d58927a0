#!/bin/sh
# Install the few Debian packages Sealroom's setup and tests need (openssl, python3-venv,
# chromium for the browser test, postgresql and haproxy for the cluster's tests), only when
# missing.
# Runs apt-get only as root; otherwise says what to install.
set -eu
missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
# The browser test (tests/test_web_browser.py) drives Debian's headless Chromium.
[ -x /usr/bin/chromium ] || missing="$missing chromium"
# Optional, best effort: systemd-analyze scores deploy/sealroom.service (the test skips without it).
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package systemd (for systemd-analyze; optional)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends systemd; } \
        || echo "could not install systemd; the unit's sandbox score will not be tested" >&2
fi
# systemd-nspawn boots systemd as PID 1 in a container for tests/test_systemd.py (root only).
if ! command -v systemd-nspawn >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package systemd-container (for systemd-nspawn)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends systemd-container; } \
        || echo "could not install systemd-container; tests/test_systemd.py will fail" >&2
fi
# PostgreSQL's server binaries: the store's tests run initdb and postgres of their own. Debian
# keeps them in /usr/lib/postgresql/N/bin, off PATH. (Its package also creates and tries to
# start a cluster of its own; the tests never use it.)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
# HAProxy: a real load balancer in front of the server, sending the PROXY protocol
# (tests/test_proxy_haproxy.py). Debian keeps it in /usr/sbin, off an ordinary user's PATH.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    missing="$missing haproxy"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "please install:$missing  (sudo apt-get install$missing)" >&2
    exit 1
fi
