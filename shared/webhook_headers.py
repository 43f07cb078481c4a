"""Header names Hookstream sets on every delivery itself (design §5).

A subscription's custom headers may not use them: the API refuses them (422), and the
dispatcher drops any that reach it anyway (a row written by hand), so a receiver's
signature check can never be fooled by a header the sender chose.
"""

from __future__ import annotations

RESERVED = frozenset(
    {"x-hub-signature-256", "content-type", "content-length", "host", "user-agent", "traceparent"}
)
RESERVED_PREFIXES = ("webhook-", "x-webhook-")


def is_reserved(name: str) -> bool:
    lower = name.lower()
    return lower in RESERVED or lower.startswith(RESERVED_PREFIXES)
