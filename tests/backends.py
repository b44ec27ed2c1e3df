"""Which Kafka and ClickHouse the integration tests run against, and how they start.

``SPENDSTREAM_TEST_BACKEND`` picks; unset, :func:`choose` decides:

1. ``env``: the servers named by ``SPENDSTREAM_TEST_KAFKA_BOOTSTRAP`` and
   ``SPENDSTREAM_TEST_CLICKHOUSE_URL`` (either or both; what is not named is embedded).
   Chosen when either variable is set.
2. ``containers``: Apache Kafka (KRaft) and a ClickHouse server in Docker, started once
   per session with testcontainers-python's Kafka and ClickHouse modules, from the images
   ``docker-compose.yml`` runs (:func:`compose_images`). Chosen when a Docker engine answers.
   The session then exports the two variables above, so every test that honours ``env``
   runs against the containers: the parameterized views, insert deduplication tokens on
   a non-replicated MergeTree and users on a real server.
3. ``embedded``: the embedded broker (tansu) per test and chDB. Chosen otherwise, and
   said once, in the session's header line.

An explicit choice is kept to: ``containers`` without a Docker engine, or ``env``
without either variable, is an error, not a silent fallback.

testcontainers' Kafka module is written for Confluent's images, whose start scripts live
in ``/etc/confluent/docker``; ``apache/kafka``'s (the compose file's image) live in
``/etc/kafka/docker`` and read the same ``KAFKA_*`` variables, so
:class:`ApacheKafkaContainer` keeps the module's KRaft configuration, listeners and wait
and replaces only the start script (:func:`kafka_start_script`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import yaml
from testcontainers.community.clickhouse import ClickHouseContainer
from testcontainers.community.kafka import KafkaContainer

BACKEND_ENV = "SPENDSTREAM_TEST_BACKEND"
KAFKA_ENV = "SPENDSTREAM_TEST_KAFKA_BOOTSTRAP"
CLICKHOUSE_ENV = "SPENDSTREAM_TEST_CLICKHOUSE_URL"
COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"

Backend = Literal["embedded", "containers", "env"]
BACKENDS: tuple[Backend, ...] = ("embedded", "containers", "env")

# Broker settings of the compose file's Kafka that a single test broker needs as well:
# spendstream creates every topic itself, and a one-broker cluster holds one replica.
KAFKA_ENVIRONMENT = {
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
}
CLICKHOUSE_USER = "spendstream"


class BackendError(RuntimeError):
    """SPENDSTREAM_TEST_BACKEND asks for servers that are not there."""


@dataclass(frozen=True)
class Choice:
    backend: Backend
    reason: str

    def header(self) -> str:
        """The session's one line about it."""
        return f"spendstream test backend: {self.backend} ({self.reason})"


def choose(environ: Mapping[str, str], docker_answers: Callable[[], str | None]) -> Choice:
    """The backend for this session. ``docker_answers`` returns None when a Docker engine
    answers, else why not (it is only asked when the answer matters)."""
    named = [name for name in (KAFKA_ENV, CLICKHOUSE_ENV) if environ.get(name)]
    asked = environ.get(BACKEND_ENV, "")
    if asked and asked not in BACKENDS:
        raise BackendError(f"{BACKEND_ENV}={asked!r}: use one of {', '.join(BACKENDS)}")
    if asked == "embedded":
        return Choice("embedded", f"{BACKEND_ENV}=embedded")
    if asked == "env" or (not asked and named):
        if not named:
            raise BackendError(f"{BACKEND_ENV}=env, but neither {KAFKA_ENV} nor {CLICKHOUSE_ENV} is set")
        return Choice("env", f"{' and '.join(named)} set")
    why_not = docker_answers()
    if why_not is None:
        return Choice("containers", f"{BACKEND_ENV}=containers" if asked else "a Docker engine answers")
    if asked == "containers":
        raise BackendError(f"{BACKEND_ENV}=containers, but no Docker engine answers: {why_not}")
    return Choice("embedded", f"no Docker engine answers ({why_not}): embedded broker and chDB")


def docker_answers() -> str | None:
    """None if a Docker engine answers a ping, else the client's error, in one line."""
    try:
        docker.from_env(timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 (whatever the client raises, there is no engine to use)
        return str(exc).splitlines()[0][:160]
    return None


def compose_images(path: Path = COMPOSE_FILE) -> dict[str, str]:
    """``{service: image}`` of the compose file's services that name an image."""
    services = yaml.safe_load(path.read_text())["services"]
    return {name: spec["image"] for name, spec in services.items() if "image" in spec}


def kafka_start_script(host: str, port: int) -> str:
    """What the Kafka container runs once its published port is known: advertise that
    address to clients (the ``PLAINTEXT`` listener) and the container's own address to
    itself (``BROKER``), then the image's own start script."""
    return (
        "#!/bin/sh\n"
        f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://$(hostname -i | cut -d' ' -f1):9092\n"
        "exec /etc/kafka/docker/run\n"
    )


def clickhouse_url(host: str, port: int, password: str) -> str:
    """The HTTP DSN of the ClickHouse container, its user's credentials inside (a test
    server's throwaway password; the worker logs DSNs with the password masked)."""
    return f"http://{CLICKHOUSE_USER}:{password}@{host}:{port}"


class ApacheKafkaContainer(KafkaContainer):
    """testcontainers' KafkaContainer in KRaft mode, run by ``apache/kafka``'s scripts."""

    def __init__(self, image: str, **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self.kraft_enabled = True  # its with_kraft() checks Confluent Platform's version numbers
        for name, value in KAFKA_ENVIRONMENT.items():
            self.with_env(name, value)

    def tc_start(self) -> None:
        script = kafka_start_script(self.get_container_host_ip(), int(self.get_exposed_port(self.port)))
        self.create_file(script.encode(), KafkaContainer.TC_START_SCRIPT)


@contextmanager
def containers() -> Iterator[dict[str, str]]:
    """Start Kafka and ClickHouse for the session; yield the ``env`` backend's variables."""
    images = compose_images()
    password = secrets.token_urlsafe(16)
    with ExitStack() as stack:
        kafka = stack.enter_context(ApacheKafkaContainer(images["kafka"]))
        clickhouse = stack.enter_context(ClickHouseContainer(
            images["clickhouse"], username=CLICKHOUSE_USER, password=password, dbname="spendstream",
        ).with_env("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "1"))  # as in compose: the tests create users
        yield {
            KAFKA_ENV: kafka.get_bootstrap_server(),
            CLICKHOUSE_ENV: clickhouse_url(clickhouse.get_container_host_ip(), int(clickhouse.get_exposed_port(8123)),
                                           password),
        }
