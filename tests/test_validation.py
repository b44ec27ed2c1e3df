"""What a decoded event must satisfy before it is priced."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from streams.events.validation import SCOPED_ATTRIBUTION, InvalidEvent, Limits, suspects, validate
from streams.ingest.enrich import event_columns
from streams.sdk.producer import usage_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)


def event(**overrides) -> dict:
    fields = dict(provider="openai", model="gpt-4o", input_tokens=100, output_tokens=20, team="search",
                  occurred_at=NOW - timedelta(seconds=5))
    fields.update(overrides)
    return usage_event(**fields)


def test_a_good_event_passes() -> None:
    validate(event(cache_read_tokens=50, reasoning_tokens=10, tags={"k": "v"}), NOW, Limits())


@pytest.mark.parametrize(
    ("overrides", "code", "words"),
    [
        ({"input_tokens": -1}, "invalid_usage", "negative"),
        ({"output_tokens": 10**12}, "invalid_usage", "over the limit"),
        ({"cache_read_tokens": 80, "cache_write_tokens": 30}, "invalid_usage", "exceed input_tokens"),
        ({"reasoning_tokens": 21}, "invalid_usage", "reasoning_tokens"),
        ({"other_units": {"web_searches": -2}}, "invalid_usage", "out of range"),
        ({"model": ""}, "missing_field", "model"),
        ({"provider": ""}, "missing_field", "provider"),
        ({"event_id": ""}, "missing_field", "event_id"),
        ({"service_tier": "turbo"}, "invalid_field", "service_tier"),
        ({"team": "x" * 10_000}, "invalid_field", "attribution.team"),
        ({"tags": {f"k{i}": "v" for i in range(100)}}, "invalid_field", "tags"),
        ({"occurred_at": NOW + timedelta(days=2)}, "invalid_timestamp", "future"),
        ({"occurred_at": NOW - timedelta(days=1000)}, "invalid_timestamp", "older"),
    ],
)
def test_rejections_say_what_is_wrong(overrides: dict, code: str, words: str) -> None:
    bad = event(**overrides)
    if "event_id" in overrides:
        bad["event_id"] = overrides["event_id"]
    with pytest.raises(InvalidEvent) as info:
        validate(bad, NOW, Limits())
    assert info.value.code == code
    assert words in info.value.reason


def test_required_attribution_is_configurable() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate(event(), NOW, Limits(required_attribution=("environment",)))
    assert info.value.code == "missing_attribution"
    validate(event(environment="production"), NOW, Limits(required_attribution=("environment",)))


ALIASING = ["probe,feature=victim", " Probe , Feature=Victim ", "PROBE,FEATURE=VICTIM", "probe=victim", "a,b", ",", "="]


@pytest.mark.parametrize("field", SCOPED_ATTRIBUTION)
@pytest.mark.parametrize("value", ALIASING)
def test_a_value_that_would_name_another_scope_is_refused(field: str, value: str) -> None:
    """``team="probe,feature=victim"`` would be charged to, and capped as, the scope
    team=probe,feature=victim: refused in every spelling, by both the row and column checks."""
    bad = event(**{field: value})
    with pytest.raises(InvalidEvent) as info:
        validate(bad, NOW, Limits())
    assert info.value.code == "invalid_attribution"
    assert f"attribution.{field}" in info.value.reason and "another scope" in info.value.reason
    assert suspects(event_columns([event(), bad]), NOW, Limits()).to_pylist() == [False, True]


def test_separators_are_fine_where_no_scope_is_built() -> None:
    """An e-mail user id (``@`` ends a scope only at its last one) and a project name with
    commas never alias a scope, so they pass both checks."""
    good = event(user_id="alice@example.com", project="q3,launch", tags={"a=b": "c,d"})
    validate(good, NOW, Limits())
    assert suspects(event_columns([good]), NOW, Limits()).to_pylist() == [False]
