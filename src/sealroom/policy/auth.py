"""Password checks with argon2id, shaped so that failures teach an attacker nothing.

Every argon2 computation costs ``memory_cost_kib`` of memory, so all of them (verify and
hash alike) take one of ``max_concurrent`` slots; a login flood then waits, briefly, and is
told the server is busy instead of driving the process out of memory.

An unknown name, a wrong password and a disabled account must be indistinguishable, by
answer and by time. Unknown and disabled accounts are therefore checked against a dummy
hash made with the same parameters, so each failure costs one full verification. So must an
account whose stored hash was made with other parameters (before the operator raised them,
usually, until its next login upgrades it): checked alone, a cheaper hash fails faster and
would tell an attacker which accounts hold the weakest hashes. When its check fails, a
verification against the dummy hash follows, so that failure costs the configured price too.

Passwords are only ever passed to argon2: they are not logged, stored, or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Protocol

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import CHEAPEST

from sealroom.core.blocking import check_may_block
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, NoSuchAccount, iso_utc, utc_now
from sealroom.core.storage import Store
from sealroom.core.text import escape_for_log, password_problem

log = logging.getLogger("sealroom.auth")


class Argon2Parameters(Protocol):
    """What auth needs from the configuration (``config.Argon2Settings`` fits)."""

    @property
    def time_cost(self) -> int: ...
    @property
    def memory_cost_kib(self) -> int: ...
    @property
    def parallelism(self) -> int: ...


def password_hasher(
    time_cost: int, memory_cost_kib: int, parallelism: int
) -> argon2.PasswordHasher:
    """The argon2id hasher for these parameters: the server and the CLI must hash alike."""
    return argon2.PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_cost_kib,
        parallelism=parallelism,
        type=argon2.Type.ID,
    )


def encoded_hash_problem(encoded: str) -> str | None:
    """Why an already-encoded argon2 hash cannot be stored (for imports), or None."""
    try:
        argon2.extract_parameters(encoded)
    except InvalidHashError:
        return "not a valid argon2id hash"
    return None


class ServerBusy(ProtocolError):  # noqa: N818 -- names the condition, as SPEC's code does
    """No verification slot came free in time; the client may retry later."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.SERVER_BUSY, "too many logins in progress, try again")


class Authenticator:
    """Checks and hashes passwords for the accounts in one store; safe from any thread."""

    def __init__(
        self,
        store: Store,
        *,
        time_cost: int,
        memory_cost_kib: int,
        parallelism: int,
        max_concurrent: int,
        wait_s: float,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if wait_s < 0:
            raise ValueError("wait_s must not be negative")
        self._store = store
        self._hasher = password_hasher(time_cost, memory_cost_kib, parallelism)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._wait_s = wait_s
        # The queue for argon2 slots, for status and metrics (a login is slow anyway: the
        # lock around these numbers costs nothing next to one verification).
        self._stats_lock = threading.Lock()
        self.waiting = 0  # callers waiting for a slot right now
        self.slots_taken = 0  # slots granted so far
        self.wait_seconds = 0.0  # total time callers waited for them
        self.busy = 0  # callers refused with server-busy after waiting wait_s
        # Nobody knows this password, so verifying against it always fails, at full cost.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    @classmethod
    def from_settings(
        cls,
        store: Store,
        params: Argon2Parameters,
        *,
        max_concurrent: int,
        wait_s: float,
    ) -> Authenticator:
        return cls(
            store,
            time_cost=params.time_cost,
            memory_cost_kib=params.memory_cost_kib,
            parallelism=params.parallelism,
            max_concurrent=max_concurrent,
            wait_s=wait_s,
        )

    @classmethod
    def for_tests(
        cls, store: Store, *, max_concurrent: int = 2, wait_s: float = 5.0
    ) -> Authenticator:
        """argon2's cheapest parameters: fast tests, and never fit for real passwords."""
        return cls(
            store,
            time_cost=CHEAPEST.time_cost,
            memory_cost_kib=CHEAPEST.memory_cost,
            parallelism=CHEAPEST.parallelism,
            max_concurrent=max_concurrent,
            wait_s=wait_s,
        )

    @contextmanager
    def _slot(self) -> Iterator[None]:
        check_may_block("argon2")
        started = time.monotonic()
        with self._stats_lock:
            self.waiting += 1
        acquired = self._slots.acquire(timeout=self._wait_s)
        with self._stats_lock:
            self.waiting -= 1
            if acquired:
                self.slots_taken += 1
                self.wait_seconds += time.monotonic() - started
            else:
                self.busy += 1
        if not acquired:
            raise ServerBusy
        try:
            yield
        finally:
            self._slots.release()

    def hash_password(self, password: str) -> str:
        """Hash a new password; raises ValueError if it breaks the password rules.

        The rules are checked here as well as at the edges so that no caller can store a
        password that the protocol would refuse to accept.
        """
        problem = password_problem(password)
        if problem is not None:
            raise ValueError(problem)
        with self._slot():
            return self._hasher.hash(password)

    def verify_login(self, name: str, password: str) -> Account | None:
        """The account if ``password`` opens it, else None, whatever the reason."""
        with self._slot():
            account = self._check(name, password)
            if account is None:
                return None
            if self._hasher.check_needs_rehash(account.password_hash):
                # The parameters were raised since this hash was made: this is the one
                # moment we hold the plain password to upgrade it.
                self._store.replace_password_hash(
                    name, account.password_hash, self._hasher.hash(password)
                )
        try:
            self._store.record_login(name)
        except NoSuchAccount:
            return None  # removed while we were verifying
        # Re-read so a disable that raced with this login wins, and last_login is current.
        current = self._store.get_account(name)
        if current is None or not current.enabled:
            return None
        return current

    def verify_password(self, account_name: str, password: str) -> bool:
        """Whether ``password`` is the account's current one (for ``/passwd OLD NEW``)."""
        with self._slot():
            return self._check(account_name, password) is not None

    def _check(self, name: str, password: str) -> Account | None:
        """The account if ``password`` opens it, else None.

        Every failure costs at least one verification at the configured parameters: against
        the dummy hash for an unknown or disabled account; against the stored hash, and then
        the dummy one, when the stored hash was made with other parameters (or is not argon2
        at all). A failure against a current hash is exactly one verification, as before.
        """
        account = self._store.get_account(name)
        if account is not None and not account.enabled:
            account = None  # checked exactly like an unknown name
        if account is None:
            self._matches(self._dummy_hash, password)
            return None
        stored = account.password_hash
        try:
            if self._matches(stored, password):
                return account
        except InvalidHashError:
            log.warning("stored password hash of %s is not valid argon2", escape_for_log(name))
        if not self._has_configured_parameters(stored):
            # The stored check alone took another time than a current hash's would: pay the
            # configured price as well. (The success path pays it as the rehash instead.)
            self._matches(self._dummy_hash, password)
        return None

    def _matches(self, encoded: str, password: str) -> bool:
        """One verification; InvalidHashError for a stored hash that is not argon2."""
        try:
            return self._hasher.verify(encoded, password)
        except VerificationError:  # includes VerifyMismatchError, the ordinary wrong password
            return False

    def _has_configured_parameters(self, encoded: str) -> bool:
        try:
            return not self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return False


TOKEN_BYTES = 32  # 256 random bits: 43 URL-safe base64 characters


class ResumeTokens:
    """Resume tokens: cheap to check, impossible to guess, stored only as SHA-256 digests.

    A reconnecting client presents a token instead of its password, so a restart does not
    queue thousands of argon2 verifications. A token is as good as a password until it
    expires, so password changes, ``disable`` and ``remove`` revoke them (in the store).
    """

    def __init__(self, store: Store, days: int, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._lifetime = timedelta(days=days)
        self._clock = clock

    def issue(self, name: str, stamp: int | None = None) -> tuple[str, str] | None:
        """A new token for ``name`` and its expiry (UTC ISO 8601); with ``stamp``, only while
        the account is still that record (else None: it was changed or re-created)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock()
        expires = iso_utc(now + self._lifetime)
        if not self._store.add_token(name, _digest(token), expires, iso_utc(now), stamp):
            return None
        return token, expires

    def verify(self, name: str, token: str) -> Account | None:
        """The account if ``token`` is a live token of ``name``, else None, whatever the reason."""
        account = self._store.token_login(_digest(token), name, iso_utc(self._clock()))
        # The digest (of a secret) was the lookup key; the store matched the name too, and
        # here it is compared once more, in constant time.
        if account is None or not hmac.compare_digest(account.name.encode(), name.encode()):
            return None
        return account


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
