"""How a stored event body is shown: pretty JSON when it parses, else text, size-capped.

The result is plain text; the template escapes it like everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# A page stays light even for a 256 KiB body; the full body is what a retry re-sends.
DISPLAY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class PayloadView:
    text: str
    is_json: bool
    size: int  # bytes as stored
    truncated: bool


def payload_view(body: bytes, limit: int = DISPLAY_LIMIT) -> PayloadView:
    try:
        # The standard library, not orjson: it keeps integers of any size and its float
        # repr round-trips, so the pretty form says what the sender sent.
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        is_json = True
    except (ValueError, RecursionError):
        text, is_json = body.decode("utf-8", "replace"), False
    encoded = text.encode()
    truncated = len(encoded) > limit
    if truncated:
        text = encoded[:limit].decode("utf-8", "ignore")
    return PayloadView(text=text, is_json=is_json, size=len(body), truncated=truncated)
