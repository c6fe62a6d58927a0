#!/bin/sh
# sslyze, the TLS scanner of tests/test_security_tls_compliance.py, in a venv of its own:
# it pins its own `cryptography` range, which must not constrain the project's.
set -eu
venv="${1:-.venv-sslyze}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/sslyze" ] && exit 0
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet 'sslyze>=6.1,<7'
"$venv/bin/sslyze" --help >/dev/null
