"""Secrets at rest (shared/secretbox.py): sealing, opening, rotation, refusals (no I/O)."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from shared import secretbox
from shared.secretbox import Keyring, SecretBoxError, generate_key, key_id, parse_keys
from shared.settings import Settings

A, B = generate_key(), generate_key()


def ring(*keys: str) -> Keyring:
    return Keyring(parse_keys(",".join(keys)))


def test_a_sealed_secret_opens_to_what_was_sealed_and_shows_nothing_of_it() -> None:
    keys = ring(A)
    sealed = keys.seal("whsec_c2VjcmV0")
    assert sealed.startswith(f"hs1:{key_id(base64.b64decode(A))}:")
    assert "whsec" not in sealed
    assert "c2VjcmV0" not in sealed
    assert keys.open(sealed) == "whsec_c2VjcmV0"
    # A fresh nonce each time: equal secrets do not look equal at rest.
    assert keys.seal("same") != keys.seal("same")


def test_after_a_rotation_old_values_open_and_new_ones_use_the_first_key() -> None:
    old = ring(A).seal("s1")
    rotated = ring(B, A)
    assert rotated.open(old) == "s1"
    assert not rotated.is_current(old)
    new = rotated.seal("s2")
    assert rotated.is_current(new)
    assert ring(B).open(new) == "s2"
    with pytest.raises(SecretBoxError, match=r"key [0-9a-f]{8}, which is not in"):
        ring(B).open(old)


def test_an_altered_value_does_not_open() -> None:
    sealed = ring(A).seal("secret")
    body = sealed.rsplit(":", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(SecretBoxError, match="does not decrypt"):
        ring(A).open(sealed.rsplit(":", 1)[0] + ":" + flipped)
    with pytest.raises(SecretBoxError, match="does not decrypt"):
        ring(A).open(sealed.rsplit(":", 1)[0] + ":")


def test_a_plaintext_value_from_before_encryption_reads_as_it_is() -> None:
    assert ring(A).open("whsec_legacy") == "whsec_legacy"
    assert not ring(A).is_current("whsec_legacy")


@pytest.mark.parametrize("raw", ["", " , ", "not base64!", base64.b64encode(b"short").decode()])
def test_bad_keys_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(SecretBoxError) as caught:
        parse_keys(raw)
    assert "HOOKSTREAM_ENCRYPTION_KEYS" in str(caught.value)
    if raw.strip(" ,"):
        assert raw not in str(caught.value)


def test_keys_in_urlsafe_base64_or_without_padding_are_accepted() -> None:
    key = bytes(range(32))
    for text in (base64.urlsafe_b64encode(key).decode(), base64.b64encode(key).decode()[:-1]):
        assert parse_keys(text) == [key]


def test_the_services_refuse_to_go_without_a_key_unless_plaintext_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOOKSTREAM_ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS", raising=False)
    with pytest.raises(SecretBoxError, match="generate-key"):
        secretbox.keyring_for(Settings(_env_file=None))  # type: ignore[call-arg]
    assert secretbox.keyring_for(Settings(allow_plaintext_secrets=True)) is None
    # Empty counts as unset, as for the API key: refused, or plaintext when allowed.
    with pytest.raises(SecretBoxError, match="is not set"):
        secretbox.keyring_for(Settings(encryption_keys=SecretStr(" ")))
    empty_but_allowed = Settings(encryption_keys=SecretStr(""), allow_plaintext_secrets=True)
    assert secretbox.keyring_for(empty_but_allowed) is None
    keys = secretbox.keyring_for(Settings(encryption_keys=SecretStr(f"{B},{A}")))
    assert keys is not None
    assert keys.primary == key_id(base64.b64decode(B))
    assert A not in repr(keys)
    assert B not in repr(keys)


def test_the_column_type_seals_on_the_way_in_and_opens_on_the_way_out() -> None:
    column = secretbox.EncryptedText()
    try:
        secretbox.install(Settings(encryption_keys=SecretStr(A)))
        stored = column.process_bind_param("whsec_x", None)  # type: ignore[arg-type]
        assert stored is not None
        assert stored.startswith("hs1:")
        assert column.process_result_value(stored, None) == "whsec_x"  # type: ignore[arg-type]
        assert column.process_result_value("legacy", None) == "legacy"  # type: ignore[arg-type]
        assert column.process_bind_param(None, None) is None  # type: ignore[arg-type]
        secretbox.install(Settings(allow_plaintext_secrets=True))
        assert column.process_bind_param("plain", None) == "plain"  # type: ignore[arg-type]
        with pytest.raises(SecretBoxError, match="not set"):
            column.process_result_value(stored, None)  # type: ignore[arg-type]
    finally:
        secretbox.install(Settings(allow_plaintext_secrets=True))


def test_generate_key_prints_a_key_the_settings_accept(capsys: pytest.CaptureFixture[str]) -> None:
    assert secretbox.main(["generate-key"]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(parse_keys(printed)) == 1
    assert secretbox.main(["bogus"]) == 2
    assert "usage" in capsys.readouterr().err
