from datetime import timedelta

import pytest
from pydantic import ValidationError

from shared.settings import Settings, format_duration, parse_duration
from shared.topics import Topics


def test_schedule_parses_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKSTREAM_RETRY_SCHEDULE", "1s,2s,3s")
    monkeypatch.setenv("HOOKSTREAM_ALLOW_PRIVATE_TARGETS", "true")
    settings = Settings()
    assert settings.retry_schedule == (
        timedelta(seconds=1),
        timedelta(seconds=2),
        timedelta(seconds=3),
    )
    assert settings.max_attempts == 4
    assert settings.allow_private_targets is True


def test_default_schedule_matches_design() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    names = [format_duration(d) for d in settings.retry_schedule]
    assert names == ["10s", "1m", "5m", "30m", "2h", "6h", "12h"]
    assert settings.max_attempts == 8
    assert settings.max_body_bytes == 262_144
    assert settings.delivery_timeout == 10
    assert settings.retention_hours == 72
    assert settings.allow_private_targets is False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("1m", 60), ("2h", 7200), ("1d", 86400), ("1.5", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "ten", "10x", "-1s"])
def test_bad_duration_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_bad_schedule_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKSTREAM_RETRY_SCHEDULE", "10s,soon")
    with pytest.raises(ValidationError, match="retry_schedule"):
        Settings()


def test_topic_names_follow_prefix_and_tiers() -> None:
    settings = Settings(topic_prefix="hs", retry_schedule="1s,2s,2s,1m")  # type: ignore[arg-type]
    topics = Topics.from_settings(settings)
    assert topics.events == "hs.events"
    assert topics.deliveries == "hs.deliveries"
    assert topics.dlq == "hs.dlq"
    assert topics.retry_topics == ("hs.retry.1s", "hs.retry.2s", "hs.retry.1m")
    assert topics.tier_for(timedelta(seconds=1.5)) == (timedelta(seconds=2), "hs.retry.2s")
    assert topics.tier_for(timedelta(hours=5)) == (timedelta(minutes=1), "hs.retry.1m")
