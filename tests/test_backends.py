"""The test servers' backend: the choice between embedded, containers and env, and the
containers' configuration. No Docker engine runs where these tests run, so what needs one
(starting the containers) runs wherever one answers, as the session's backend."""

from __future__ import annotations

import pytest

from tests.backends import (
    BACKEND_ENV,
    CLICKHOUSE_ENV,
    KAFKA_ENV,
    BackendError,
    Choice,
    choose,
    clickhouse_url,
    compose_images,
    docker_answers,
    kafka_start_script,
)

ENGINE = lambda: None  # noqa: E731 (a Docker engine answers)
NO_ENGINE = lambda: "Error while fetching server API version"  # noqa: E731


def never_asked() -> str | None:
    raise AssertionError("the Docker engine was asked, but the answer cannot matter")


@pytest.mark.parametrize(("environ", "engine", "expected"), [
    ({}, ENGINE, Choice("containers", "a Docker engine answers")),
    ({}, NO_ENGINE, Choice("embedded", "no Docker engine answers (Error while fetching server API version): "
                                        "embedded broker and chDB")),
    ({KAFKA_ENV: "kafka:9092"}, never_asked, Choice("env", f"{KAFKA_ENV} set")),
    ({KAFKA_ENV: "k:9092", CLICKHOUSE_ENV: "http://c:8123"}, never_asked,
     Choice("env", f"{KAFKA_ENV} and {CLICKHOUSE_ENV} set")),
    ({BACKEND_ENV: "embedded", KAFKA_ENV: "k:9092"}, never_asked, Choice("embedded", f"{BACKEND_ENV}=embedded")),
    ({BACKEND_ENV: "containers", KAFKA_ENV: "k:9092"}, ENGINE, Choice("containers", f"{BACKEND_ENV}=containers")),
    ({BACKEND_ENV: "env", CLICKHOUSE_ENV: "http://c:8123"}, never_asked, Choice("env", f"{CLICKHOUSE_ENV} set")),
])
def test_the_backend_chosen(environ: dict[str, str], engine, expected: Choice) -> None:
    assert choose(environ, engine) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({BACKEND_ENV: "containers"}, "no Docker engine answers: Error while fetching"),
    ({BACKEND_ENV: "env"}, f"neither {KAFKA_ENV} nor {CLICKHOUSE_ENV} is set"),
    ({BACKEND_ENV: "docker"}, "use one of embedded, containers, env"),
])
def test_an_explicit_choice_that_cannot_be_had_is_an_error_not_a_fallback(environ: dict[str, str], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        choose(environ, NO_ENGINE)


def test_the_header_says_which_backend_and_why() -> None:
    assert Choice("embedded", "no Docker engine answers (x)").header() == (
        "spendstream test backend: embedded (no Docker engine answers (x))")


def test_without_an_engine_the_answer_is_why_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")  # a socket nobody listens on
    why = docker_answers()
    assert why and "\n" not in why


def test_the_containers_run_the_images_of_the_compose_file() -> None:
    images = compose_images()
    assert images["kafka"].startswith("apache/kafka:") and images["clickhouse"].startswith("clickhouse/clickhouse-server:")


def test_kafka_advertises_the_published_port_and_runs_the_apache_image_scripts() -> None:
    script = kafka_start_script("localhost", 49321)
    assert "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://localhost:49321,BROKER://$(hostname -i" in script
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")


def test_clickhouse_is_reached_over_http_as_its_own_user() -> None:
    assert clickhouse_url("127.0.0.1", 32768, "pw") == "http://spendstream:pw@127.0.0.1:32768"
