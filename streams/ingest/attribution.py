"""Attribution: which team pays for an event.

A ``team`` tag on the event wins: the producer knows best. Otherwise routing rules map the
event's API key id, then its service, then its user id to a team. Otherwise the event is
``unattributed``, and that share of spend is itself a reported figure, so nobody can hide
spend by leaving the tag off.

Routing rules are a TOML file grouped by team, so a review shows what each team owns::

    [teams.search]
    api_keys = ["ak_search_prod"]
    services = ["search-api", "ranking-*"]   # a trailing * matches a name prefix
    users = ["svc-search"]

Matches are exact (after trimming whitespace); a service pattern ending in ``*`` matches
by prefix, and an exact service name beats a pattern, a longer pattern beats a shorter
one. A key, service or user listed under two teams is an error, not a coin toss. Team
names are normalised (trimmed, lowercased) everywhere, tags included; a team name holding
``,`` or ``=`` is refused, since it would name another budget scope (``team=a,feature=b``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.events.scopes import scope_value_problem
from streams.pricing.price_book import format_validation_errors, read_toml_without_floats

__all__ = ["UNATTRIBUTED", "Attributed", "Router", "RoutingRules", "RoutingRulesError", "TeamRules"]

UNATTRIBUTED = "unattributed"


class RoutingRulesError(ValueError):
    """A routing rules file that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Attributed:
    """The team that pays, and what decided it."""

    team: str
    attributed_by: str  # "tag", "api_key", "service", "user" or "unattributed"


def normalise_team(team: str | None) -> str:
    """The canonical form of a team name ("" when there is none)."""
    return team.strip().lower() if team else ""


Identifier = Annotated[str, Field(min_length=1)]


class TeamRules(BaseModel):
    """What one team owns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: tuple[Identifier, ...] = ()
    services: tuple[Identifier, ...] = ()
    users: tuple[Identifier, ...] = ()

    @field_validator("api_keys", "services", "users")
    @classmethod
    def _trimmed(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        trimmed = tuple(v.strip() for v in values)
        if any(not v for v in trimmed):
            raise ValueError("must not contain an empty name")
        return trimmed

    @field_validator("services")
    @classmethod
    def _prefix_globs_only(cls, services: tuple[str, ...]) -> tuple[str, ...]:
        for service in services:
            body = service.removesuffix("*")
            if not body or any(ch in body for ch in "*?[]"):
                raise ValueError(
                    f"service pattern {service!r}: only a trailing * is supported (e.g. \"billing-*\")"
                )
        return services


class RoutingRules(BaseModel):
    """Validated routing rules. Build them with :meth:`load` (a file) or :meth:`parse` (text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: dict[str, TeamRules] = Field(default_factory=dict)

    @field_validator("teams")
    @classmethod
    def _normalised_and_unambiguous(cls, teams: dict[str, TeamRules]) -> dict[str, TeamRules]:
        normalised: dict[str, TeamRules] = {}
        for name, rules in teams.items():
            team = normalise_team(name)
            if not team:
                raise ValueError("a team name must not be empty")
            if problem := scope_value_problem("team", team):
                raise ValueError(problem)
            if team in normalised:
                raise ValueError(f"team {team!r} is listed twice (names are case-insensitive)")
            normalised[team] = rules
        for kind in ("api_keys", "services", "users"):
            owner: dict[str, str] = {}
            for team, rules in normalised.items():
                for name in getattr(rules, kind):
                    if name in owner and owner[name] != team:
                        raise ValueError(f"{kind} entry {name!r} is listed under both {owner[name]!r} and {team!r}")
                    owner[name] = team
        return normalised

    @classmethod
    def load(cls, path: Path) -> RoutingRules:
        """Read and validate a TOML rules file; raise :class:`RoutingRulesError` if unusable."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RoutingRulesError(f"routing rules {path}: cannot read them: {exc}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> RoutingRules:
        data = read_toml_without_floats(text, f"routing rules {source}", RoutingRulesError)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RoutingRulesError(format_validation_errors(f"routing rules {source}", exc)) from None

    def lookup_tables(self) -> tuple[dict[str, str], dict[str, str], tuple[tuple[str, str], ...], dict[str, str]]:
        """(api key -> team, exact service -> team, (service prefix, team) longest first, user -> team)."""
        api_keys: dict[str, str] = {}
        services: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        users: dict[str, str] = {}
        for team, rules in self.teams.items():
            api_keys.update(dict.fromkeys(rules.api_keys, team))
            users.update(dict.fromkeys(rules.users, team))
            for service in rules.services:
                if service.endswith("*"):
                    prefixes.append((service[:-1], team))
                else:
                    services[service] = team
        prefixes.sort(key=lambda item: -len(item[0]))  # stable: equal lengths keep file order
        return api_keys, services, tuple(prefixes), users


class Router:
    """Attributes events to teams: tag, then API key, service, user; else unattributed."""

    def __init__(self, rules: RoutingRules | None = None) -> None:
        self.rules = rules or RoutingRules()
        api_keys, services, prefixes, users = self.rules.lookup_tables()
        # Results are shared immutable objects: no allocation per event on a rule hit.
        self._by_api_key = {k: Attributed(team, "api_key") for k, team in api_keys.items()}
        self._by_service = {k: Attributed(team, "service") for k, team in services.items()}
        self._service_prefixes = tuple((p, Attributed(team, "service")) for p, team in prefixes)
        self._by_user = {k: Attributed(team, "user") for k, team in users.items()}
        self._unattributed = Attributed(UNATTRIBUTED, "unattributed")
        self._by_prefix = lru_cache(maxsize=4096)(self._match_prefix)
        self._by_tag = lru_cache(maxsize=4096)(self._tagged)

    @classmethod
    def from_file(cls, path: Path) -> Router:
        """A router over the rules in a TOML file; raises :class:`RoutingRulesError`."""
        return cls(RoutingRules.load(path))

    def attribute(
        self, *, team: str | None, api_key_id: str | None, service: str | None, user_id: str | None
    ) -> Attributed:
        if team:
            tagged = self._by_tag(team)
            if tagged is not None:
                return tagged
        if api_key_id and (hit := self._by_api_key.get(api_key_id.strip())) is not None:
            return hit
        if service:
            name = service.strip()
            hit = self._by_service.get(name)
            if hit is None and self._service_prefixes:
                hit = self._by_prefix(name)
            if hit is not None:
                return hit
        if user_id and (hit := self._by_user.get(user_id.strip())) is not None:
            return hit
        return self._unattributed

    def attribute_columns(
        self, team: pa.Array, api_key_id: pa.Array, service: pa.Array, user_id: pa.Array
    ) -> tuple[pa.Array, pa.Array]:
        """:meth:`attribute` over columns: (team, attributed_by). One look-up per distinct
        team tag; only the rows without a usable tag go through the other rules one by one."""
        tags = pc.dictionary_encode(team)
        by_tag = [self._by_tag(tag) if tag else None for tag in tags.dictionary.to_pylist()]
        hits = [None if code is None else by_tag[code] for code in tags.indices.to_pylist()]
        untagged = [row for row, hit in enumerate(hits) if hit is None]
        if untagged:
            rows = pa.array(untagged, pa.int64())
            others = zip(api_key_id.take(rows).to_pylist(), service.take(rows).to_pylist(),
                         user_id.take(rows).to_pylist(), strict=True)
            for row, (key, name, user) in zip(untagged, others, strict=True):
                hits[row] = self.attribute(team=None, api_key_id=key, service=name, user_id=user)
        return (pa.array([hit.team for hit in hits], pa.string()),  # type: ignore[union-attr]
                pa.array([hit.attributed_by for hit in hits], pa.string()))  # type: ignore[union-attr]

    def _tagged(self, team: str) -> Attributed | None:
        name = normalise_team(team)
        return Attributed(name, "tag") if name else None  # a blank tag is no tag

    def _match_prefix(self, service: str) -> Attributed | None:
        for prefix, hit in self._service_prefixes:
            if service.startswith(prefix):
                return hit
        return None

    @property
    def teams(self) -> Mapping[str, TeamRules]:
        return self.rules.teams
