"""Subscription secrets encrypted at rest: seal the secrets stored in plaintext so far.

From this revision on the ORM seals ``secret_key`` and ``previous_secret_key`` with
AES-GCM under ``HOOKSTREAM_ENCRYPTION_KEYS`` (``shared/secretbox.py``); this migration
seals what earlier versions wrote. A database without plaintext secrets (a new one)
needs no key here. One with plaintext secrets needs the key the services will use, or
``HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS=true`` to leave them as they are: the migration
stops with that message rather than guess. Values already sealed are left alone, so
running it again, or after the services sealed some rows themselves, is safe.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from shared import secretbox
from shared.settings import Settings

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PLAIN = (
    "(secret_key IS NOT NULL AND secret_key NOT LIKE 'hs1:%') OR "
    "(previous_secret_key IS NOT NULL AND previous_secret_key NOT LIKE 'hs1:%')"
)
_SEALED = "secret_key LIKE 'hs1:%' OR previous_secret_key LIKE 'hs1:%'"
# Built from the two constant conditions above, never from input.
_COUNT = {
    "plain": sa.text("SELECT count(*) FROM subscriptions WHERE " + _PLAIN),  # noqa: S608
    "sealed": sa.text("SELECT count(*) FROM subscriptions WHERE " + _SEALED),  # noqa: S608
}
_ROWS = {
    name: sa.text(
        "SELECT id, secret_key, previous_secret_key FROM subscriptions WHERE " + where  # noqa: S608
    )
    for name, where in (("plain", _PLAIN), ("sealed", _SEALED))
}
_WRITE = sa.text(
    "UPDATE subscriptions SET secret_key = :secret, previous_secret_key = :previous WHERE id = :id"
)


def _rewrite(which: str, change: Callable[[str], str]) -> int:
    bind = op.get_bind()
    rows = bind.execute(_ROWS[which]).all()
    updates = [
        {
            "id": sid,
            "secret": None if secret is None else change(secret),
            "previous": None if previous is None else change(previous),
        }
        for sid, secret, previous in rows
    ]
    for start in range(0, len(updates), 1000):
        bind.execute(_WRITE, updates[start : start + 1000])
    return len(updates)


def _keyring(count: int, doing: str) -> secretbox.Keyring | None:
    try:
        return secretbox.keyring_for(Settings())
    except secretbox.SecretBoxError as exc:
        raise RuntimeError(f"{count} subscriptions have secrets to {doing}: {exc}") from None


def upgrade() -> None:
    plain = op.get_bind().execute(_COUNT["plain"]).scalar_one()
    if not plain:
        return
    keyring = _keyring(plain, "encrypt")
    if keyring is None:
        return  # plaintext allowed explicitly: they stay as they are
    _rewrite("plain", lambda value: value if secretbox.is_sealed(value) else keyring.seal(value))


def downgrade() -> None:
    sealed = op.get_bind().execute(_COUNT["sealed"]).scalar_one()
    if not sealed:
        return
    keyring = _keyring(sealed, "decrypt")
    if keyring is None:
        raise RuntimeError(
            f"{sealed} subscriptions have encrypted secrets: set HOOKSTREAM_ENCRYPTION_KEYS "
            "to decrypt them before downgrading"
        )
    _rewrite("sealed", keyring.open)
