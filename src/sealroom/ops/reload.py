"""What a reload (SIGHUP) may change, and the checks new TLS files must pass first.

A reload is all or nothing: the new configuration and the new TLS context are built and
checked completely before anything running is touched, so a broken file changes nothing.
Some settings are fixed for the life of the process (sockets are bound, the database is
open, argon2 hashes are made): a changed value there is reported and the running value kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from sealroom.config import Settings
from sealroom.core.errors import UserError

# Sections whose new values need a restart; everything else applies on reload.
RESTART_ONLY = ("listen", "storage", "auth", "metrics", "control", "cluster")


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: datetime
    not_after: datetime


def certificate_validity(path: Path) -> Validity:
    """The validity period of the first (leaf) certificate in the PEM file at ``path``."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise UserError(f"cannot read TLS certificate {path}: {error.strerror or error}") from None
    except ValueError:
        raise UserError(f"TLS certificate {path} holds no valid PEM certificate") from None
    leaf = certificates[0]
    return Validity(leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def check_certificate_dates(path: Path, now: datetime | None = None) -> Validity:
    """The leaf's validity, or a UserError if it has expired or is not valid yet."""
    validity = certificate_validity(path)
    now = now or datetime.now(UTC)
    if now >= validity.not_after:
        raise UserError(f"TLS certificate {path} expired at {_iso(validity.not_after)}")
    if now < validity.not_before:
        raise UserError(f"TLS certificate {path} is not valid before {_iso(validity.not_before)}")
    return validity


def effective_settings(running: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with the restart-only parts of ``running``, and the names of those that differ.

    ``log.format`` is restart-only too (the handler is set up once); ``log.level`` applies.
    So is ``web.listen`` (the socket is bound); the other ``web`` keys apply.
    """
    changed = [name for name in RESTART_ONLY if getattr(new, name) != getattr(running, name)]
    if new.log.format != running.log.format:
        changed.append("log.format")
    if new.web.listen != running.web.listen:
        changed.append("web.listen")
    kept = {name: getattr(running, name) for name in RESTART_ONLY}
    merged = replace(
        new,
        log=replace(new.log, format=running.log.format),
        web=replace(new.web, listen=running.web.listen),
        **kept,
    )
    return merged, changed


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
