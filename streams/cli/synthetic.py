"""Realistic synthetic usage traffic, deterministic by seed.

Used by the demo, the tests and the benchmarks: several teams with their features,
environments, providers and models (one self-hosted model the organisation price book
prices, one model nobody prices), prompt caching, batch-tier jobs, and calls that carry no
team tag and must be attributed by routing rules (API key or service) or left
unattributed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from streams.sdk.producer import usage_event

# team -> its features
TEAMS: dict[str, tuple[str, ...]] = {
    "search": ("answers", "query-rewrite", "rerank"),
    "support": ("case-summary", "reply-draft"),
    "growth": ("lead-enrichment", "email-drafting"),
    "data-science": ("nightly-eval", "labeling"),
    "platform": ("code-review", "incident-bot"),
}

# (provider, model, relative weight, typical input tokens, typical output tokens)
MODELS: tuple[tuple[str, str, int, int, int], ...] = (
    ("openai", "gpt-4o", 20, 1800, 350),
    ("openai", "gpt-4o-mini", 30, 1200, 250),
    ("anthropic", "claude-sonnet-4-5", 18, 3000, 600),
    ("anthropic", "claude-haiku-4-5", 12, 900, 200),
    ("google", "gemini-2.5-flash", 10, 2500, 400),
    ("google", "gemini-2.5-pro", 4, 60_000, 1500),
    ("self-hosted", "acme-llama-70b", 5, 1500, 300),
    ("openai", "mystery-model-x", 1, 800, 100),
)

ENVIRONMENTS = ("production",) * 8 + ("staging", "development")
# Calls with no team tag: routed by API key id or service (see config/routing_rules.example.toml).
UNTAGGED_SOURCES = (
    {"api_key_id": "key-growth-batch"},
    {"service": "billing-reconciler"},
    {"service": "support-widget"},
    {"api_key_id": "key-unknown-legacy"},  # no rule matches: unattributed
)


@dataclass(frozen=True)
class TrafficShape:
    untagged_share: float = 0.08
    cached_share: float = 0.35
    batch_share: float = 0.05
    agent_share: float = 0.3  # calls made by an agent (they carry an agent_id)
    # Distinct user ids (``user-<n>``) and agent ids (``agent-<team>-<n>``, spread evenly
    # over the teams); raise them for high-cardinality traffic (the memory benchmark).
    users: int = 200
    agents: int = 5 * len(TEAMS)


def generate(
    count: int,
    *,
    seed: int = 7,
    start: datetime | None = None,
    spacing: timedelta = timedelta(milliseconds=10),
    shape: TrafficShape = TrafficShape(),
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` UsageEvent records with ids ``syn-<seed>-<n>``."""
    rng = random.Random(seed)
    at = start or datetime.now(timezone.utc) - spacing * count
    weights = [m[2] for m in MODELS]
    teams = list(TEAMS)
    agents_per_team = max(1, shape.agents // len(teams))
    for n in range(count):
        provider, model, _, typical_in, typical_out = rng.choices(MODELS, weights)[0]
        input_tokens = max(1, int(rng.lognormvariate(0, 0.6) * typical_in))
        output_tokens = max(1, int(rng.lognormvariate(0, 0.5) * typical_out))
        cached = rng.random() < shape.cached_share and provider != "self-hosted"
        cache_read = int(input_tokens * rng.uniform(0.2, 0.9)) if cached else 0
        cache_write = int((input_tokens - cache_read) * 0.3) if cached and provider == "anthropic" else 0
        team = rng.choice(teams)
        attribution: dict[str, str | None] = {
            "team": team,
            "feature": rng.choice(TEAMS[team]),
            "environment": rng.choice(ENVIRONMENTS),
            "user_id": f"user-{rng.randrange(shape.users)}",
            "service": f"{team}-api",
            "agent_id": f"agent-{team}-{rng.randrange(agents_per_team)}" if rng.random() < shape.agent_share else None,
        }
        if rng.random() < shape.untagged_share:
            attribution.update({"team": None, "service": None, **rng.choice(UNTAGGED_SOURCES)})
        yield usage_event(
            event_id=f"syn-{seed}-{n}",
            occurred_at=at + spacing * n,
            provider=provider,
            model=model,
            service_tier="batch" if rng.random() < shape.batch_share else "standard",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=output_tokens // 3 if model == "gemini-2.5-pro" else 0,
            **attribution,
        )
