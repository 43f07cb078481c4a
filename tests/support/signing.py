"""What a producer sends to ``POST /ingest/{id}``: the body's GitHub-style signature."""

from __future__ import annotations

import hashlib
import hmac


def hub_headers(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}
