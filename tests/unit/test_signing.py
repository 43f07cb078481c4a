"""Signatures checked against independent vectors (computed by hand with hashlib)."""

import base64
import hashlib
import hmac
import json

from shared.signing import (
    hub_signature,
    standard_webhooks_key,
    standard_webhooks_signature,
    verify_hub_signature,
)


def test_hub_signature_vector() -> None:
    # echo -n '{"x":1}' | openssl dgst -sha256 -hmac s3cret
    assert hub_signature("s3cret", b'{"x":1}') == (
        "sha256=" + hmac.new(b"s3cret", b'{"x":1}', hashlib.sha256).hexdigest()
    )


def test_verify_accepts_raw_body_and_legacy_json_dumps_form() -> None:
    body = b'{"a":1,"b":"x"}'
    payload = json.loads(body)
    assert verify_hub_signature("k", body, hub_signature("k", body), payload)
    legacy = hub_signature("k", json.dumps(payload).encode())
    assert verify_hub_signature("k", body, legacy, payload)
    assert not verify_hub_signature("k", body, legacy, None)
    assert not verify_hub_signature("other", body, hub_signature("k", body), payload)
    assert not verify_hub_signature("k", body, None, payload)
    assert not verify_hub_signature("k", body, "sha256=", payload)


def test_standard_webhooks_signature_vector() -> None:
    # The example from the Standard Webhooks specification.
    key = standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = standard_webhooks_signature(
        key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_plain_secret_is_used_as_bytes() -> None:
    assert standard_webhooks_key("plain-secret") == b"plain-secret"
    raw = base64.b64encode(b"\x00\x01key").decode()
    assert standard_webhooks_key("whsec_" + raw) == b"\x00\x01key"
