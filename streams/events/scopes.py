"""Scope keys: how the contract names who money is attributed to, and how that name is read.

A *scope* is one or more kinds, each with the value an event gives for it, written
``kind=value`` and joined by ``,`` in a fixed order of kinds: ``team=search``,
``team=search,feature=answers``, ``user=u-17``. The kinds, and the event field each reads,
are :data:`SCOPE_FIELDS`. A *spend key* is a scope and a calendar period joined by ``@``
(``team=search@month:2026-11``); the periods themselves are :mod:`streams.budgets.periods`'.
Spend, budgets, the guard and routing all name a scope by this text, and a scope's hash
picks its partition (:func:`scope_partition`), so that every period of a scope lives together.

``,`` and ``=`` are what the text is parsed by, so no value may hold one: a team tagged
``probe,feature=victim`` would read back as the scope ``team=probe,feature=victim`` and be
counted towards, capped as and refused by the guard as another team's scope. Every gate
that takes a value which ends up in a scope refuses such a value with the same sentence
(:func:`scope_value_problem`). ``@`` may be in a value (a user id can be an e-mail address):
a spend key's period holds none, so the last ``@`` ends the scope (:func:`split_key`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

# Scope kinds and the priced-row field each reads; a scope is one or more of them.
SCOPE_FIELDS = {
    "team": "team",
    "feature": "feature",
    "environment": "environment",
    "api_key": "api_key_id",
    "user": "user_id",
    "agent": "agent_id",
    "session": "session_id",
}
DEFAULT_SCOPES: tuple[tuple[str, ...], ...] = (
    ("team",), ("team", "feature"), ("environment",), ("api_key",), ("user",), ("agent",), ("session",),
)

# The characters that join a scope's kinds and values (``team=search,feature=answers``). No
# value may hold one: a team tagged ``probe,feature=victim`` would otherwise be counted
# towards, capped as and refused by the guard as the scope ``team=probe,feature=victim``.
# ("@", which ends the scope in a spend key, may: :func:`split_key` takes the last one and
# periods hold none, so a user id can be an e-mail address.)
SCOPE_SEPARATORS = (",", "=")


class ScopeError(ValueError):
    """A scope text that does not name a scope, with what to fix."""


def scope_value_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be a scope value (it holds a separator), or None if it can.

    The one sentence of every gate that refuses such a value, so that they agree: event
    validation (a dead letter), budget scopes, routing rules and the guard.
    """
    if any(separator in value for separator in SCOPE_SEPARATORS):
        return (f"{name} {value[:80]!r} contains ',' or '=', which separate the parts of a scope "
                "(team=search,feature=answers), so it would name another scope")
    return None


def canonical_scope(text: str) -> str:
    """``feature=answers, team=search`` → ``team=search,feature=answers`` (kinds in a fixed order).

    A value holding ``=`` (``team=a=b``) is refused, as events with one are: the spend
    table never has a scope with such a value, so a budget on it could never be reached.
    Raises :class:`ScopeError`.
    """
    parts: dict[str, str] = {}
    for item in text.split(","):
        kind, sep, value = item.strip().partition("=")
        kind, value = kind.strip(), value.strip()
        if not sep or not value:
            raise ScopeError(f"scope part {item.strip()!r} is not kind=value")
        if kind not in SCOPE_FIELDS:
            raise ScopeError(f"unknown scope kind {kind!r}; use {', '.join(SCOPE_FIELDS)}")
        if kind in parts:
            raise ScopeError(f"scope kind {kind!r} given twice")
        if problem := scope_value_problem(f"scope {kind}", value):
            raise ScopeError(problem)
        parts[kind] = value.lower() if kind == "team" else value
    return ",".join(f"{kind}={parts[kind]}" for kind in SCOPE_FIELDS if kind in parts)


def scope_of(values: dict[str, str], kinds: tuple[str, ...]) -> str | None:
    """``team=search,feature=answers`` from attribution values, or None if one is missing."""
    scope_values = [values.get(SCOPE_FIELDS[kind]) for kind in kinds]
    if not all(scope_values):
        return None
    return scope_text(kinds, scope_values)


def scope_text(kinds: Iterable[str], values: Iterable[Any]) -> str:
    """``team=search,feature=answers`` from the kinds and their (present) values."""
    return ",".join(f"{kind}={value}" for kind, value in zip(kinds, values))


def scope_kinds(scope: str) -> tuple[str, ...]:
    """``team=search,feature=answers`` → ``("team", "feature")``."""
    return tuple(part.partition("=")[0] for part in scope.split(","))


def scopes_of(row: dict[str, Any], scope_kinds: tuple[tuple[str, ...], ...] = DEFAULT_SCOPES) -> list[str]:
    """The scopes a priced row's spend counts towards (kinds the row has values for)."""
    return [scope for kinds in scope_kinds if (scope := scope_of(row, kinds))]


def spend_key(scope: str, period: str) -> str:
    return f"{scope}@{period}"


def split_key(key: str) -> tuple[str, str]:
    """``(scope, period)`` of a spend key; the last ``@`` ends the scope (a value may hold one)."""
    scope, _, period = key.rpartition("@")
    return scope, period


def scope_partition(scope: str, partitions: int) -> int:
    return zlib.crc32(scope.encode()) % partitions


def partition_of(key: str, partitions: int) -> int:
    """Partition of a spend key: by scope, so every period of a scope lives together."""
    return scope_partition(split_key(key)[0], partitions)
