#!/bin/sh
# Install Debian's mosquitto, the MQTT broker the handshakes benchmark compares Sealroom
# with, only when it is missing. Optional: without it the benchmark skips that column.
# Runs apt-get only as root; otherwise says what to install. The broker's own service is
# not used (the benchmark starts a private broker on a free loopback port).
set -eu
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package mosquitto (the handshakes benchmark's reference broker)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto
else
    echo "please install mosquitto (sudo apt-get install mosquitto);" \
        "the handshakes benchmark skips it until then" >&2
    exit 1
fi
