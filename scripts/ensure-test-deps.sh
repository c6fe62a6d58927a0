#!/bin/sh
# Install the Debian packages the tests need beyond Sealroom's own (scripts/ensure-system-deps.sh):
# Chromium for the browser test, PostgreSQL's server for the store tests, HAProxy for the
# load-balancer tests, Redis's server for the tests that need a real Redis, systemd and
# systemd-container for the unit's tests. Only when missing; apt-get only as root, otherwise
# it says what to install. `make test` runs it; `make run` does not need any of these.
set -eu
missing=""
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
# Redis's server: tests/engines.py starts redis-server of its own on a free loopback port
# (Debian's package may also start a server of its own on 6379; the tests never use it.)
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    missing="$missing redis-server"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages for the tests:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "please install:$missing  (sudo apt-get install$missing)" >&2
    exit 1
fi
