"""Subscription secrets encrypted at rest: AES-256-GCM, with keys that can rotate.

A stored secret reads ``hs1:<key id>:<base64url(nonce + ciphertext + tag)>``. The key id
is the first 8 hex digits of the key's SHA-256, so a value names the key that opens it
without revealing anything about the key. ``HOOKSTREAM_ENCRYPTION_KEYS`` lists keys
(base64 of 32 bytes each, comma-separated): the first encrypts, every one decrypts, so a
new key goes first, the services restart, ``python -m shared.secretbox reencrypt``
rewrites every row under it, and only then is the old key removed.

A value without the ``hs1:`` prefix is a secret stored before encryption (or with
``HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS``): it reads as it is, and the next write or the
re-encrypt command encrypts it. The ORM does the work (``EncryptedText`` on the two
secret columns), with the keyring that ``install`` put in place when the process built
its database engine (``shared.db.make_engine``): no other code sees a ciphertext.

``python -m shared.secretbox generate-key`` prints a new key;
``python -m shared.secretbox reencrypt`` re-encrypts every secret not under the first key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import sys
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Text, text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("secretbox")

PREFIX = "hs1"
# Bound into every ciphertext: a value copied from another column or system that happens
# to use the same key does not open here.
_AAD = b"hookstream:subscription-secret:v1"
_NONCE = 12
KEY_BYTES = 32


class SecretBoxError(Exception):
    """A stored secret that cannot be opened, or keys that cannot be used."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_keys(raw: str) -> list[bytes]:
    """``HOOKSTREAM_ENCRYPTION_KEYS`` → keys. Errors name the position, never the value."""
    keys: list[bytes] = []
    for n, part in enumerate((p.strip() for p in raw.split(",")), 1):
        if not part:
            continue
        try:
            key = base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise SecretBoxError(
                f"HOOKSTREAM_ENCRYPTION_KEYS: key {n} is not the base64 of {KEY_BYTES} bytes "
                "(make one with: python -m shared.secretbox generate-key)"
            )
        keys.append(key)
    if not keys:
        raise SecretBoxError("HOOKSTREAM_ENCRYPTION_KEYS is set but holds no key")
    return keys


def generate_key() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX + ":")


class Keyring:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretBoxError("a keyring needs at least one key")
        self.primary = key_id(keys[0])
        self._ciphers = {key_id(k): AESGCM(k) for k in reversed(keys)}
        self._ciphers[self.primary] = AESGCM(keys[0])

    def __repr__(self) -> str:  # never the keys
        return f"Keyring(primary={self.primary}, keys={len(self._ciphers)})"

    def seal(self, plaintext: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.primary].encrypt(nonce, plaintext.encode(), _AAD)
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}:{self.primary}:{body}"

    def open(self, stored: str) -> str:
        """The plaintext of a stored value; a legacy plaintext value as it is."""
        if not is_sealed(stored):
            return stored
        _, kid, body = [*stored.split(":", 2), "", ""][:3]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretBoxError(
                f"a secret is encrypted with key {kid}, which is not in HOOKSTREAM_ENCRYPTION_KEYS"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretBoxError(
                f"a secret under key {kid} does not decrypt: altered, or not written by Hookstream"
            ) from None

    def is_current(self, stored: str) -> bool:
        """Sealed under the first key: nothing for ``reencrypt`` to do."""
        return stored.startswith(f"{PREFIX}:{self.primary}:")


# The process's keyring (None: secrets are written in plaintext). Set once at start-up by
# ``install``, read by the column type on every bind and result.
_keyring: Keyring | None = None
_installed = False


def keyring_for(settings: Settings) -> Keyring | None:
    """The keyring the settings ask for; refuses to go without one unless plaintext
    secrets were allowed explicitly. An empty value counts as unset, as for the API key
    (``.env.example`` and compose leave it empty until someone fills it in)."""
    raw = "" if settings.encryption_keys is None else settings.encryption_keys.get_secret_value()
    if raw.strip():
        return Keyring(parse_keys(raw))
    if settings.allow_plaintext_secrets:
        return None
    raise SecretBoxError(
        "HOOKSTREAM_ENCRYPTION_KEYS is not set: subscription secrets are stored encrypted. "
        "Make a key with `python -m shared.secretbox generate-key` (make run keeps one in "
        ".local/dev-encryption-key), or set HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS=true to store "
        "them in plaintext"
    )


def install(settings: Settings) -> None:
    """Put the settings' keyring in place for this process (idempotent)."""
    global _keyring, _installed
    keyring = keyring_for(settings)
    if keyring is None and not _installed:
        log.warning("subscription secrets are stored in plaintext (allowed by settings)")
    _keyring, _installed = keyring, True


def seal(plaintext: str) -> str:
    return plaintext if _keyring is None else _keyring.seal(plaintext)


def reveal(stored: str) -> str:
    """A stored value's plaintext (for code that reads the column without the ORM)."""
    if _keyring is not None:
        return _keyring.open(stored)
    if is_sealed(stored):
        raise SecretBoxError("a secret is encrypted but HOOKSTREAM_ENCRYPTION_KEYS is not set")
    return stored


class EncryptedText(TypeDecorator[str]):
    """A text column whose values are sealed on the way in and opened on the way out."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else seal(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else reveal(value)


# --- re-encryption -----------------------------------------------------------------------

_BATCH = 500
_PAGE = text(
    "SELECT id, secret_key, previous_secret_key FROM subscriptions "
    "WHERE id > :after AND (secret_key IS NOT NULL OR previous_secret_key IS NOT NULL) "
    "ORDER BY id LIMIT :n"
)
_WRITE = text(
    "UPDATE subscriptions SET secret_key = :secret, previous_secret_key = :previous "
    "WHERE id = :id AND secret_key IS NOT DISTINCT FROM :was_secret "
    "AND previous_secret_key IS NOT DISTINCT FROM :was_previous"
)


def _stale(keyring: Keyring, value: str | None) -> bool:
    return value is not None and not keyring.is_current(value)


async def reencrypt(settings: Settings, *, batch: int = _BATCH) -> dict[str, int]:
    """Rewrite every secret that is not sealed under the first key (older keys, plaintext),
    a batch per transaction. Each row is written only if unchanged since it was read, so
    the services keep running meanwhile. Returns the counts."""
    from shared.db import make_engine  # the engine module imports this one

    keyring = keyring_for(settings)
    if keyring is None:
        raise SecretBoxError("nothing to re-encrypt with: HOOKSTREAM_ENCRYPTION_KEYS is not set")
    engine = make_engine(settings, pool_size=1)
    counts = {"rows": 0, "rewritten": 0, "changed_meanwhile": 0}
    after = "00000000-0000-0000-0000-000000000000"
    try:
        while True:
            async with engine.begin() as conn:
                rows = (await conn.execute(_PAGE, {"after": after, "n": batch})).all()
                for sid, secret, previous in rows:
                    counts["rows"] += 1
                    if not (_stale(keyring, secret) or _stale(keyring, previous)):
                        continue
                    result = await conn.execute(
                        _WRITE,
                        {
                            "id": sid,
                            "secret": _reseal(keyring, secret),
                            "previous": _reseal(keyring, previous),
                            "was_secret": secret,
                            "was_previous": previous,
                        },
                    )
                    written = getattr(result, "rowcount", 0) == 1
                    counts["rewritten" if written else "changed_meanwhile"] += 1
            if len(rows) < batch:
                return counts
            after = str(rows[-1][0])
    finally:
        await engine.dispose()


def _reseal(keyring: Keyring, value: str | None) -> str | None:
    return None if value is None else keyring.seal(keyring.open(value))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "generate-key":
        print(generate_key())
        return 0
    if command == "reencrypt":
        try:
            counts = asyncio.run(reencrypt(Settings()))
        except SecretBoxError as exc:
            print(f"reencrypt: {exc}", file=sys.stderr)
            return 1
        print(
            f"reencrypt: {counts['rows']:,} subscriptions with a secret, "
            f"{counts['rewritten']:,} rewritten under the first key, "
            f"{counts['changed_meanwhile']:,} changed meanwhile (written by the service)"
        )
        return 0
    print("usage: python -m shared.secretbox generate-key | reencrypt", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
