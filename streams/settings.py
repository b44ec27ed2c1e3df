"""One settings object for every part of spendstream, read from the environment.

Every variable is ``SPENDSTREAM_<FIELD>`` (for example ``SPENDSTREAM_KAFKA_BOOTSTRAP``).
The defaults run locally: a broker on localhost and the embedded ClickHouse engine (chDB)
in ``.spendstream/chdb`` under the working directory. Pointing the worker at real
infrastructure is a matter of setting the Kafka and ClickHouse variables; nothing else
changes.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.events.validation import Limits

# The shortest raw-row retention: the sink's 7-day dedup horizon and a day (streams.ledger.retention).
USAGE_RETENTION_MIN_DAYS = 8


class Settings(BaseSettings):
    """All configuration, with defaults that run on a laptop."""

    model_config = SettingsConfigDict(env_prefix="SPENDSTREAM_", extra="ignore")

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    partitions: int = Field(4, ge=1, description="Partitions of every topic the worker creates.")
    replication_factor: int = Field(1, ge=1)

    usage_topic: str = "spend.usage.v1"
    priced_topic: str = "spend.priced.v1"
    deltas_topic: str = "spend.deltas.v1"
    anomaly_topic: str = "spend.anomaly.v1"
    dead_letter_topic: str = "spend.dead-letter.v1"
    alerts_topic: str = "spend.alerts.v1"
    cap_state_topic: str = "spend.cap-state.v1"
    budgets_topic: str = "spend.budgets.v1"

    # --- ClickHouse ------------------------------------------------------------------
    clickhouse_dsn: str = "chdb://.spendstream/chdb"
    clickhouse_database: str = "spendstream"
    clickhouse_username: str | None = None
    clickhouse_password: SecretStr | None = None
    clickhouse_verify_tls: bool = True
    clickhouse_ca_cert: Path | None = None
    sql_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest a read-only query typed by a person (`/sql`, `spendstream sql`) may run."
    )
    sql_max_result_rows: int = Field(
        100_000, ge=1, description="Most rows a read-only query may return; a larger result is an error, not a cut."
    )
    sql_max_result_bytes: int = Field(
        100_000_000, ge=1, description="Most bytes (uncompressed, in the engine) a read-only query may return."
    )
    sql_max_threads: int = Field(
        1, ge=1, description="Engine threads one read-only query may use, so a heavy one leaves cores to the sink."
    )
    sql_concurrency: int = Field(
        2, ge=1, description="Read-only queries the worker runs at once; more wait their turn."
    )
    usage_retention_days: int = Field(
        0, ge=0,
        description="Days a raw usage row is kept after it lands (0: for ever); rollups and reports keep "
                    f"everything. At least {USAGE_RETENTION_MIN_DAYS}: streams.ledger.retention says why.",
    )

    # --- The OTLP receiver (`spendstream otlp`) ----------------------------------------
    otlp_host: str = Field("127.0.0.1", description="Address the OTLP/HTTP receiver listens on.")
    otlp_port: int = Field(4318, ge=1, le=65535, description="Port of the OTLP/HTTP receiver (4318: OTLP/HTTP's own).")
    otlp_max_body_bytes: int = Field(
        16_000_000, ge=1024,
        description="Largest export request the receiver reads, after gzip is undone; a larger one is refused (413).",
    )
    otlp_attributes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Where an OTLP span's attribution comes from: for each UsageEvent attribution field, the "
                    "span or resource attributes to read, first found wins (span before resource), e.g. "
                    '{"team": ["app.team"]}. Fields not named keep their defaults (streams.ingest.otlp.mapping).',
    )
    otlp_native_usage_scopes: list[str] = Field(
        default_factory=lambda: ["openlit"],
        description="Instrumentation scopes (name prefixes) whose GenAI spans carry the provider's own token counts "
                    "(Anthropic's input without cache reads and writes, Gemini's output without thoughts) instead of "
                    "the semantic conventions' totals.",
    )

    # --- The worker ------------------------------------------------------------------
    roles: Literal["all", "process", "sink"] = Field(
        "all",
        description="What this worker runs. all: everything (one worker, or many against a ClickHouse server, "
                    "where every worker sinks its share of the priced rows). sink: only writes priced rows to "
                    "ClickHouse, for the embedded engine, which one process owns. process: everything else "
                    "(enrich, spend tables, caps, alerts, anomalies), as many as you like beside one sink.",
    )
    app_id: str = "spendstream"
    worker_data_dir: Path = Path(".spendstream/worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_token: SecretStr | None = Field(
        None,
        description="Bearer token of the worker's HTTP endpoints; unset: generated at first start into "
                    "<worker_data_dir>/web-token (owner-only), where local tools read it.",
    )
    web_advertised_url: str | None = Field(
        None,
        description="The URL other workers reach this one at (a reservation is routed to the worker owning its "
                    "budget's partition); unset: http://<web_host>:<web_port>, with this machine's host name for "
                    "0.0.0.0 (a container's name on its network).",
    )
    web_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (besides IP literals, localhost and web_host) the worker answers to, e.g. "
                    '["worker-1"] behind a proxy or in a compose network. Others are refused: DNS rebinding.',
    )
    web_session_hours: float = Field(
        12.0, gt=0, description="How long a dashboard sign-in (its session cookie) lasts."
    )
    ui_port: int = Field(6067, ge=1, le=65535, description="Port of `spendstream ui` (on web_host).")
    dashboard_refresh_seconds: float = Field(
        2.0, gt=0, description="How often an open dashboard asks for its live figures (spend now, alerts)."
    )
    table_store: str = "memory://"
    standby_replicas: int = Field(
        0, ge=0,
        description="Warm copies of each table partition other workers keep, for a faster takeover after a crash "
                    "with rocksdb://. With copies, Faust leaves every worker up to ceil(partitions / workers) "
                    "partitions, so a worker added to a group may get none; memory:// keeps the copies in the "
                    "tables themselves, where /spend would show them.",
    )
    broker_session_timeout: float = 10.0
    consumer_fetch_max_wait_ms: int = Field(
        20, ge=1, le=1500,
        description="Longest a fetch waits for data (the worker's consumer, and alert readers'). Kafka answers as "
                    "soon as data arrives; the embedded broker answers a fetch after up to half of it, on every hop.",
    )
    timezone: str = "UTC"
    heap_trim_interval: float = Field(
        10.0, ge=0, description="Seconds between checks that return free C heap memory to the system (0: never)."
    )

    enrich_batch_max: int = Field(10_000, ge=1, description="Kafka messages per enrich batch.")
    enrich_batch_bytes: int = Field(
        16_000_000, ge=1, description="Usage bytes per enrich batch: the bound for SDK envelopes (streams.runtime.batching)."
    )
    enrich_batch_within: float = Field(0.2, gt=0, description="Seconds to wait to fill a batch.")
    enrich_chunk_bytes: int = Field(2_000_000, ge=1, description="Usage bytes enriched at once (memory bound).")
    enrich_processes: int = Field(
        2, ge=0, description="Child processes that enrich (0: on the event loop). See streams.ingest.stage."
    )
    priced_message_rows: int = Field(2000, ge=1, description="Priced rows per priced-topic message.")
    message_max_bytes: int = Field(
        900_000, ge=1000, description="Largest deltas or anomaly message sent (Kafka refuses over 1 MB by default)."
    )
    internal_buffer_messages: int = Field(
        64, ge=1,
        description="Messages of the priced, deltas and anomaly topics (each a chunk's worth) an agent holds "
                    "in memory beyond its batch; past that Faust stops fetching the partition, and a backlog "
                    "waits in Kafka rather than in the worker.",
    )
    sink_batch_max: int = Field(50, ge=1, description="Priced-topic messages per ClickHouse insert.")
    sink_batch_within: float = Field(
        0.5, gt=0, description="Seconds from the start of one ClickHouse insert to the next, at least: at most two "
                               "inserts a second, each every priced row Kafka has so far (up to sink_batch_max messages)."
    )
    spend_batch_max: int = Field(500, ge=1, description="Deltas messages per spend-table batch.")
    spend_batch_within: float = Field(0.1, gt=0)
    anomaly_batch_max: int = Field(
        100, ge=1, description="Summaries per anomaly batch (each up to message_max_bytes: a memory bound)."
    )
    anomaly_batch_within: float = Field(
        1.0, gt=0, description="Seconds a batch of summaries waits for more while Kafka has more on the way "
                               "(a batch holding every summary Kafka has is taken at once): states are written per batch."
    )
    anomaly_processes: int = Field(
        1, ge=0, le=1, description="Child processes that run the detectors (0: on the event loop). "
                                   "See streams.anomaly.stage.",
    )
    anomaly_sweep_interval: float = Field(60.0, gt=0, description="Seconds between anomaly sweeps.")
    cap_tick_interval: float = Field(30.0, gt=0, description="Seconds between budget re-checks without traffic.")
    reservation_expiry_seconds: float = Field(
        600.0, gt=0,
        description="Seconds after which a reservation no usage event settled is released (a budget may say "
                    "otherwise): longer than the slowest call a service makes.",
    )
    reservation_sweep_interval: float = Field(1.0, gt=0, description="Seconds between sweeps of expired reservations.")
    reserve_timeout_seconds: float = Field(
        0.5, gt=0,
        description="How long the SDK waits for a worker to answer a reservation before it follows the budgets' "
                    "fail policy (open: allow, logged and counted; closed: refuse).",
    )
    spend_retention_periods: int = Field(3, ge=1, description="Closed periods kept in spend tables.")
    spend_shadow_max_scopes: int = Field(
        100_000, ge=0,
        description="Unbudgeted high-cardinality scopes (users, agents, ...) whose spend the worker keeps in "
                    "memory (about 0.6 KB each) so that a budget set later counts it; the least recently active "
                    "are dropped beyond this.",
    )

    # --- What an event may say (anything else goes to the dead-letter topic) ------------
    event_max_age_days: int = Field(400, ge=1, description="Older events are rejected.")
    event_max_future_seconds: int = Field(600, ge=0, description="Clock skew tolerated.")
    dead_letter_max_original: int = Field(
        256 * 1024, ge=1024, description="Original bytes kept in a dead letter (Kafka limits message size)."
    )
    required_attribution: list[str] = Field(
        default_factory=list, description="Attribution fields every event must carry, e.g. environment."
    )

    # --- Reference data --------------------------------------------------------------
    price_book: Path | None = Field(None, description="Organisation price book (TOML).")
    routing_rules: Path | None = Field(None, description="Attribution routing rules (TOML).")
    anomaly_config: Path | None = Field(None, description="Anomaly detector settings (TOML).")

    # --- Provider bills and reconciliation (streams.ledger.bills, streams.reports.reconcile)
    openai_admin_key: SecretStr | None = Field(
        None, description="OpenAI admin key (sk-admin-...) that `spendstream bills fetch --provider openai` uses; never logged."
    )
    anthropic_admin_key: SecretStr | None = Field(
        None, description="Anthropic Admin API key (sk-ant-admin...) for `bills fetch --provider anthropic`; never logged."
    )
    openai_api_base: str = Field("https://api.openai.com/v1", description="Where OpenAI's organization API answers.")
    anthropic_api_base: str = Field("https://api.anthropic.com", description="Where Anthropic's Admin API answers.")
    bills_ca_cert: Path | None = Field(
        None, description="CA bundle the bill fetcher trusts instead of the system's (a TLS-inspecting proxy)."
    )
    reconcile_drift_ratio: Decimal = Field(
        Decimal("0.02"), ge=0,
        description="A provider's day is a drift when its unexplained difference exceeds this share of its bill ...",
    )
    reconcile_drift_min: Decimal = Field(
        Decimal(10), ge=0, description="... and this amount (in the bill's currency): then one reconciliation_drift alert."
    )

    # --- Fault injection (tests and chaos drills) ------------------------------------
    fault_clickhouse_down: Path | None = Field(
        None,
        description="While the file named here exists, the ClickHouse sink acts as if ClickHouse were down: every "
                    "write fails before reaching it and is retried (streams.ledger.sink). Unset or empty: off.",
    )

    @field_validator("fault_clickhouse_down", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable means off (as it did when the sink read it), not the directory ".".
        return None if value == "" else value

    @field_validator("usage_retention_days")
    @classmethod
    def _retention_past_the_dedup_horizon(cls, value: int) -> int:
        if 0 < value < USAGE_RETENTION_MIN_DAYS:
            raise ValueError(f"must be 0 (keep raw rows for ever) or at least {USAGE_RETENTION_MIN_DAYS} days: the "
                             "sink finds copies of an event up to 7 days later by the raw rows")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for an unknown zone name
        return value

    def limits(self) -> Limits:
        return Limits(
            max_age=timedelta(days=self.event_max_age_days),
            max_future=timedelta(seconds=self.event_max_future_seconds),
            required_attribution=tuple(self.required_attribution),
        )

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    def consumer_group(self, roles: str | None = None) -> str:
        """The consumer group of a worker with ``roles`` (default: these settings' own), also
        Faust's app id and the prefix of its changelogs: ``app_id``, but ``<app_id>-sink`` for
        a sink-only worker. A sink subscribes to the priced topic alone, and the embedded
        broker refuses a group member whose subscription differs from its group's
        (InconsistentGroupProtocol); on any broker, the processing workers' rebalances then
        never pause the sink. It has no tables, so no changelog bears its name."""
        return f"{self.app_id}-sink" if (roles or self.roles) == "sink" else self.app_id

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def advertised_url(self) -> str:
        """Where other workers reach this one: ``web_advertised_url``, else ``web_url`` with
        the machine's host name in place of an any-address bind (0.0.0.0 reaches no one)."""
        if self.web_advertised_url:
            return self.web_advertised_url.rstrip("/")
        host = socket.gethostname() if self.web_host in ("0.0.0.0", "::") else self.web_host
        return f"http://{host}:{self.web_port}"

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return options
