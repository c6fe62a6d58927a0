"""Client profiles: where ``send``, ``tail`` and ``chat`` connect, and as whom.

Like the ``nats`` CLI's contexts, a small per-user file names servers once, so ``--ca …
--user …`` is not repeated on every command line::

    # ~/.config/sealroom/client.yaml  (mode 0600)
    default: work                       # used when no --profile is given
    profiles:
      work:
        host: chat.example.org
        port: 7443
        ca: ~/work/sealroom-ca.crt      # ~ and paths relative to this file are fine
        user: alice
        password_file: ~/.config/sealroom/work.password
      local: {port: 7443, ca: ~/src/sealroom/certs/ca.crt, user: admin}

The file is ``$SEALROOM_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/sealroom/client.yaml``,
else ``~/.config/sealroom/client.yaml``. ``--profile NAME`` (or ``$SEALROOM_PROFILE``)
picks a profile, else the file's ``default``, else none. Flags override the profile.

A profile holds no password, only the name of a file that does. The file must still be
readable by its owner only: who may edit it decides which server your password goes to.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from sealroom.core.errors import UserError
from sealroom.core.text import escape_for_log

FILE_ENV: Final = "SEALROOM_CLIENT_CONFIG"
PROFILE_ENV: Final = "SEALROOM_PROFILE"
MAX_FILE_BYTES: Final = 65536

_TEXT_KEYS: Final = ("host", "user")
_PATH_KEYS: Final = ("ca", "cert", "key", "password_file")
_KEYS: Final = (*_TEXT_KEYS, "port", *_PATH_KEYS)


@dataclass(frozen=True, slots=True)
class Profile:
    """One profile's settings; None where it says nothing."""

    name: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    password_file: Path | None = None


NO_PROFILE: Final = Profile()


def profiles_path() -> Path:
    explicit = os.environ.get(FILE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sealroom" / "client.yaml"


def load_profile(name: str | None) -> Profile:
    """The profile ``name`` (else ``$SEALROOM_PROFILE``, else the default), or none."""
    path = profiles_path()
    chosen = name or os.environ.get(PROFILE_ENV) or None
    data = _read(path, required=chosen is not None)
    if data is None:
        return NO_PROFILE
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise UserError(f"{path}: default: the name of a profile")
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise UserError(f"{path}: profiles: a mapping of names to profiles")
    chosen = chosen or default
    if chosen is None:
        return NO_PROFILE
    entry = profiles.get(chosen)
    if entry is None:
        known = ", ".join(sorted(str(key) for key in profiles)) or "none"
        raise UserError(
            f"no profile {escape_for_log(chosen)!r} in {path} (it has: {escape_for_log(known)})"
        )
    return _profile(path, chosen, entry)


def _read(path: Path, *, required: bool) -> dict[str, object] | None:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise UserError(f"no profiles: {path} does not exist") from None
        return None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise UserError(
            f"{path} may be read or changed by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{path}: not valid YAML: {escape_for_log(str(error))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected 'default' and 'profiles' keys")
    unknown = sorted(str(key) for key in data if key not in ("default", "profiles"))
    if unknown:
        raise UserError(f"{path}: unknown key {escape_for_log(unknown[0])!r}")
    return data


def _profile(path: Path, name: str, entry: object) -> Profile:
    where = f"{path}: profiles.{escape_for_log(name)}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: a mapping of {', '.join(_KEYS)}")
    texts: dict[str, str] = {}
    paths: dict[str, Path] = {}
    port: int | None = None
    for key, value in entry.items():
        if key not in _KEYS:
            raise UserError(f"{where}.{escape_for_log(str(key))}: unknown key")
        if key == "port":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
                raise UserError(f"{where}.port: a port number from 1 to 65535")
            port = value
        elif not isinstance(value, str) or not value:
            raise UserError(f"{where}.{key}: a non-empty string")
        elif key in _PATH_KEYS:
            # Relative paths mean what they say next to the file, wherever one runs from.
            paths[key] = path.parent / Path(value).expanduser()
        else:
            texts[key] = value
    return Profile(
        name=name,
        host=texts.get("host"),
        port=port,
        user=texts.get("user"),
        ca=paths.get("ca"),
        cert=paths.get("cert"),
        key=paths.get("key"),
        password_file=paths.get("password_file"),
    )
