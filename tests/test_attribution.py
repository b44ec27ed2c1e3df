"""Attribution: the team tag wins, then routing rules (API key, service, user), else unattributed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streams.ingest.attribution import UNATTRIBUTED, Attributed, Router, RoutingRules, RoutingRulesError

CONFIG = Path(__file__).resolve().parent.parent / "config"

RULES = """
[teams.search]
api_keys = ["key-search-prod"]
services = ["search-api", "rerank-*"]

[teams.platform]
services = ["billing-*", "billing-ledger-export"]
users = ["ops-bot"]

[teams.Finance-Ops]
services = ["billing-ledger-*"]

[teams.data-science]
users = ["maria.chen"]
api_keys = ["key-ds"]
"""


@pytest.fixture
def router() -> Router:
    return Router(RoutingRules.parse(textwrap.dedent(RULES)))


def attribute(
    router: Router,
    *,
    team: str | None = None,
    api_key_id: str | None = None,
    service: str | None = None,
    user_id: str | None = None,
) -> Attributed:
    return router.attribute(team=team, api_key_id=api_key_id, service=service, user_id=user_id)


def test_team_tag_wins_over_every_rule(router: Router) -> None:
    tagged = attribute(router, team="  Growth ", api_key_id="key-search-prod", service="billing-x", user_id="ops-bot")
    assert tagged == Attributed("growth", "tag")


def test_blank_tag_is_no_tag(router: Router) -> None:
    assert attribute(router, team="   ", api_key_id="key-search-prod") == Attributed("search", "api_key")
    assert attribute(router, team="", service="search-api") == Attributed("search", "service")


def test_api_key_then_service_then_user(router: Router) -> None:
    # Each rule kind on its own.
    assert attribute(router, api_key_id="key-ds") == Attributed("data-science", "api_key")
    assert attribute(router, service="search-api") == Attributed("search", "service")
    assert attribute(router, user_id="maria.chen") == Attributed("data-science", "user")
    # In order of precedence.
    assert attribute(router, api_key_id="key-ds", service="search-api", user_id="ops-bot").attributed_by == "api_key"
    assert attribute(router, api_key_id="key-unknown", service="search-api", user_id="ops-bot") == Attributed(
        "search", "service"
    )
    assert attribute(router, api_key_id="key-unknown", service="nope", user_id="ops-bot") == Attributed(
        "platform", "user"
    )


def test_service_globs_match_prefixes_exact_and_longer_first(router: Router) -> None:
    assert attribute(router, service="rerank-v2") == Attributed("search", "service")
    assert attribute(router, service="billing-reconciler") == Attributed("platform", "service")
    assert attribute(router, service="billing-ledger-sync") == Attributed("finance-ops", "service")  # longer prefix
    assert attribute(router, service="billing-ledger-export") == Attributed("platform", "service")  # exact name
    assert attribute(router, service="rerank") == Attributed(UNATTRIBUTED, "unattributed")  # prefix is "rerank-"


def test_matches_are_exact_but_trimmed(router: Router) -> None:
    assert attribute(router, api_key_id=" key-ds ") == Attributed("data-science", "api_key")
    assert attribute(router, api_key_id="KEY-DS") == Attributed(UNATTRIBUTED, "unattributed")
    assert attribute(router, user_id="maria") == Attributed(UNATTRIBUTED, "unattributed")


def test_unattributed_fallback() -> None:
    empty = Router()
    assert attribute(empty) == Attributed(UNATTRIBUTED, "unattributed")
    assert attribute(empty, api_key_id="k", service="s", user_id="u") == Attributed("unattributed", "unattributed")
    assert attribute(empty, team="Search") == Attributed("search", "tag")


def test_team_names_are_normalised_in_rules(router: Router) -> None:
    assert set(router.teams) == {"search", "platform", "finance-ops", "data-science"}


def test_example_rules_cover_the_demo_traffic() -> None:
    router = Router.from_file(CONFIG / "routing_rules.example.toml")
    assert attribute(router, api_key_id="key-growth-batch") == Attributed("growth", "api_key")
    assert attribute(router, service="billing-reconciler") == Attributed("platform", "service")
    assert attribute(router, service="support-widget") == Attributed("support", "service")
    assert attribute(router, api_key_id="key-unknown-legacy") == Attributed(UNATTRIBUTED, "unattributed")
    assert set(router.teams) == {"search", "support", "growth", "data-science", "platform"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[teams.search]\napi_keys = ["k1"]\n[teams.growth]\napi_keys = ["k1"]\n',
         "api_keys entry 'k1' is listed under both 'search' and 'growth'"),
        ('[teams.search]\nservices = ["*-api"]\n', "service pattern '*-api': only a trailing * is supported"),
        ('[teams.search]\nservices = ["*"]\n', "only a trailing * is supported"),
        ('[teams.search]\nkeys = ["k1"]\n', "teams.search.keys: unknown key"),
        ('[teams.search]\nusers = "maria"\n', "teams.search.users: Input should be a valid tuple"),
        ('[teams.search]\nusers = [" "]\n', "teams.search.users: must not contain an empty name"),
        ('[teams.Search]\n[teams.search]\n', "team 'search' is listed twice"),
        ('[teams." Probe,Feature=Victim "]\n', "team 'probe,feature=victim' contains ',' or '='"),
        ('[teams."a=b"]\n', "team 'a=b' contains ',' or '='"),
        ('[teams.search]\nweight = 0.5\n', "teams.search.weight = 0.5 is a TOML float"),
        ('[routes]\n', "routes: unknown key"),
        ("[teams.search\n", "not valid TOML"),
    ],
)
def test_bad_rules_fail_with_a_clear_message(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(RoutingRulesError) as caught:
        Router.from_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingRulesError, match="cannot read them"):
        Router.from_file(tmp_path / "absent.toml")
