#!/bin/sh
# First run only: create the database and an `admin` account with a random password, and
# print the password once. Account commands never create a database, so `db init` comes
# first (it leaves an existing database as it is).
set -eu
sealroom="$1"
"$sealroom" db init >/dev/null
if [ "$("$sealroom" user list --json)" = "[]" ]; then
    password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
    printf '%s\n' "$password" | "$sealroom" user add admin --admin --password-stdin
    echo "Created account 'admin' with password: $password"
    echo "(shown once; change it with /passwd or 'sealroom user passwd admin')"
fi
