"""``hookstream verify`` against signatures made by the reference ``standardwebhooks``
library and by a GitHub-style ``x-hub-signature-256`` HMAC: valid ones pass, and each kind
of failure is named."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookstream_cli.main import run
from hookstream_cli.verify import verify
from shared.signing import standard_webhooks_key, standard_webhooks_signature

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
BODY = b'{"type": "invoice.paid", "data": {"id": 42, "amount": 1999}}'
MSG_ID = "msg_2Lf3kq8yS1"


def standard(
    body: bytes = BODY, secret: str = SECRET, msg_id: str = MSG_ID, age: float = 0
) -> dict[str, str]:
    """Headers signed by the reference library, ``age`` seconds ago."""
    moment = datetime.now(UTC) - timedelta(seconds=age)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, moment, body.decode()),
    }


def hub(body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}"}


def cli(
    headers: dict[str, str], body: bytes, *extra: str, secret: str = SECRET
) -> tuple[int, str, str]:
    argv = ["verify", "--secret", secret, *extra]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    out, err = io.StringIO(), io.StringIO()
    code = run(argv, stdin=io.BytesIO(body), stdout=out, stderr=err, env={})
    return code, out.getvalue(), err.getvalue()


# --- valid --------------------------------------------------------------------------


def test_a_reference_signature_is_valid_and_the_library_agrees() -> None:
    headers = standard()
    Webhook(SECRET).verify(BODY, headers)  # the reference library's own verdict
    code, out, err = cli(headers, BODY)
    assert code == 0, out + err
    assert out.startswith("valid: standard-webhooks: a v1 signature matches")
    assert err == ""


def test_both_schemes_together_are_valid() -> None:
    code, out, _ = cli({**standard(), **hub()}, BODY)
    assert code == 0
    lines = out.splitlines()
    assert [line.split(":")[:2] for line in lines] == [
        ["valid", " standard-webhooks"],
        ["valid", " x-hub-signature-256"],
    ]


def test_one_matching_signature_among_several_is_enough() -> None:
    """During a secret rotation the header carries the old and the new signature."""
    headers = standard()
    stale_key = standard_webhooks_signature(
        standard_webhooks_key(OTHER), MSG_ID, int(headers["webhook-timestamp"]), BODY
    )
    headers["webhook-signature"] = f"{stale_key} {headers['webhook-signature']}"
    assert cli(headers, BODY)[0] == 0
    assert cli(headers, BODY, secret=OTHER)[0] == 0


def test_a_secret_without_the_prefix_verifies_both_ways() -> None:
    """Hookstream signs a plain secret with its bytes; the reference library reads any
    secret as base64. A receiver holding either gets a valid answer."""
    plain = "correct horse battery staple"
    stamp = int(time.time())
    ours = standard_webhooks_signature(plain.encode(), MSG_ID, stamp, BODY)
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(stamp), "webhook-signature": ours}
    assert cli(headers, BODY, secret=plain)[0] == 0
    bare = base64.b64encode(b"r" * 24).decode()
    assert cli(standard(secret=bare), BODY, secret=bare)[0] == 0


def test_json_output() -> None:
    code, out, _ = cli({**standard(), **hub(secret=OTHER)}, BODY, "--json")
    assert code == 1
    result = json.loads(out)
    assert result["valid"] is False
    assert [(c["scheme"], c["valid"]) for c in result["checks"]] == [
        ("standard-webhooks", True),
        ("x-hub-signature-256", False),
    ]


def test_the_body_can_come_from_a_file(tmp_path) -> None:
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    assert cli(standard(), b"", "--body", f"@{path}")[0] == 0
    code, _, err = cli(standard(), b"", "--body", f"@{tmp_path / 'missing.json'}")
    assert code == 2
    assert "cannot read" in err


# --- each failure, named --------------------------------------------------------------


def test_wrong_secret() -> None:
    headers = standard()
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers)
    code, out, err = cli(headers, BODY, secret=OTHER)
    assert code == 1
    assert out.startswith("invalid: standard-webhooks: signature mismatch: wrong secret")
    assert "Traceback" not in out + err


def test_stale_timestamp_and_the_tolerance_flag() -> None:
    headers = standard(age=600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, headers)
    code, out, _ = cli(headers, BODY)
    assert code == 1
    # 600 s, or 601 when the clock ticked over between signing and checking.
    assert re.search(r"stale timestamp: signed 60[01] s ago, past the tolerance of 300 s", out)
    assert "the signature itself matches" in out
    assert cli(headers, BODY, "--tolerance", "15m")[0] == 0
    assert cli(headers, BODY, "--tolerance", "9m")[0] == 1


def test_timestamp_in_the_future() -> None:
    code, out, _ = cli(standard(age=-900), BODY)
    assert code == 1
    assert "in the future" in out


def test_stale_and_wrong_secret_names_both() -> None:
    code, out, _ = cli(standard(age=3600), BODY, secret=OTHER)
    assert code == 1
    assert "wrong secret" in out
    assert "stale timestamp" in out


def test_body_changed() -> None:
    headers = standard()
    changed = BODY.replace(b"1999", b"1")
    code, out, _ = cli(headers, changed)
    assert code == 1
    assert "signature mismatch" in out
    assert "body" in out


def test_body_with_a_newline_added_is_named() -> None:
    """`echo '{...}' | hookstream verify` adds a newline the sender never signed."""
    code, out, _ = cli({**standard(), **hub()}, BODY + b"\n")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert all("body changed after signing: it ends with a newline" in line for line in lines)


def test_reserialised_json_is_named() -> None:
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert reserialised != BODY
    code, out, _ = cli(standard(), reserialised)
    assert code == 1
    assert "body changed after signing: the JSON was re-serialised" in out


def test_id_or_timestamp_changed_while_the_body_signature_holds() -> None:
    headers = {**standard(), **hub()}
    headers["webhook-id"] = "msg_someone_else"
    code, out, _ = cli(headers, BODY)
    assert code == 1
    assert "webhook-id or webhook-timestamp changed after signing" in out
    assert "valid: x-hub-signature-256" in out


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    headers = standard()
    del headers[missing]
    code, out, _ = cli(headers, BODY)
    assert code == 1
    assert out.strip() == f"invalid: standard-webhooks: missing header {missing}"


def test_no_signature_header_at_all() -> None:
    code, out, _ = cli({"content-type": "application/json"}, BODY)
    assert code == 1
    assert "no signature header" in out


def test_malformed_values() -> None:
    headers = standard()
    assert "not a Unix time" in cli({**headers, "webhook-timestamp": "yesterday"}, BODY)[1]
    assert "no v1 signature" in cli({**headers, "webhook-signature": "v2,abc"}, BODY)[1]
    code, out, _ = cli({"x-hub-signature-256": "md5=abc"}, BODY)
    assert code == 1
    assert "malformed x-hub-signature-256" in out


def test_hub_signature_failures() -> None:
    assert cli(hub(), BODY)[0] == 0
    code, out, _ = cli(hub(), BODY, secret=OTHER)
    assert code == 1
    assert "signature mismatch: wrong secret, or the body changed" in out
    code, out, _ = cli(hub(), BODY.replace(b"42", b"43"))
    assert code == 1
    assert "invalid: x-hub-signature-256" in out


def test_a_header_not_in_name_value_form_is_a_usage_error() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["verify", "--secret", SECRET, "--header", "webhook-id"],
        stdin=io.BytesIO(BODY),
        stdout=out,
        stderr=err,
        env={},
    )
    assert code == 2
    assert err.getvalue().strip() == "hookstream: error: header 'webhook-id' is not 'Name: value'"


def test_core_reports_every_scheme_present() -> None:
    checks = verify(SECRET, {**standard(), **hub()}, BODY, now=time.time())
    assert [(c.scheme, c.valid) for c in checks] == [
        ("standard-webhooks", True),
        ("x-hub-signature-256", True),
    ]
