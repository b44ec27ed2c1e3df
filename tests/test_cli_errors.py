"""A person's mistake at the command line gets one line saying what is wrong and how to fix
it, and a non-zero exit: never a traceback. A real bug keeps its traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streams.cli.errors import Group, one_line
from streams.cli.localstack import free_port


def spendstream(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    return subprocess.run([sys.executable, "-m", "streams", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def nothing_listening(tmp_path: Path) -> dict[str, str]:
    """Kafka and ClickHouse addresses where nothing listens, with a password to keep secret."""
    return {
        "SPENDSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SPENDSTREAM_CLICKHOUSE_DSN": f"http://someone:s3cret-pw@127.0.0.1:{free_port()}",
        "SPENDSTREAM_WORKER_DATA_DIR": str(tmp_path / "worker"),
    }


@pytest.mark.parametrize("args", [
    ["budgets", "list"],
    ["budgets", "rm", "nope"],
    ["alerts", "tail", "--count", "1"],
    ["dlq", "list"],
    ["emit", "--provider", "openai", "--model", "gpt-4o", "--input-tokens", "10", "--output-tokens", "1"],
    ["otlp"],
])
def test_no_broker_is_one_line_naming_the_address_and_the_variable(nothing_listening: dict[str, str], args) -> None:
    done = spendstream(nothing_listening, *args)
    assert_one_line(done, "cannot reach Kafka at " + nothing_listening["SPENDSTREAM_KAFKA_BOOTSTRAP"],
                    "SPENDSTREAM_KAFKA_BOOTSTRAP")
    assert "Unclosed" not in done.stderr


def test_emit_validates_before_sending(nothing_listening: dict[str, str]) -> None:
    # No broker either: the event is refused before any connection is tried.
    done = spendstream(nothing_listening, "emit", "--provider", "openai", "--model", "gpt-4o",
                       "--input-tokens", "-10", "--output-tokens", "1")
    assert_one_line(done, "--input-tokens", "negative", "nothing was sent")
    team = spendstream(nothing_listening, "emit", "--provider", "openai", "--model", "gpt-4o",
                       "--input-tokens", "1", "--output-tokens", "1", "--team", "a,feature=b")
    assert_one_line(team, "--team")


def test_clickhouse_unreachable_is_one_line_with_the_password_masked(nothing_listening: dict[str, str]) -> None:
    done = spendstream(nothing_listening, "migrate")
    line = assert_one_line(done, "cannot connect to ClickHouse", "someone:***@", "SPENDSTREAM_CLICKHOUSE_DSN")
    assert "s3cret-pw" not in done.stderr + done.stdout and line


def test_no_migrations_names_the_command(tmp_path: Path) -> None:
    done = spendstream({"SPENDSTREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
                        "SPENDSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}, "sql", "SELECT 1")
    assert_one_line(done, "does not exist", "spendstream migrate")


def test_a_bad_setting_names_the_variable(nothing_listening: dict[str, str]) -> None:
    done = spendstream({**nothing_listening, "SPENDSTREAM_PARTITIONS": "0"}, "migrate")
    assert_one_line(done, "SPENDSTREAM_PARTITIONS", "greater than or equal to 1")


def in_process(env: dict[str, str], *args: str) -> str:
    """Run a command in this process (no interpreter start: these fail before any I/O);
    its one output line."""
    from streams.cli.main import cli

    result = CliRunner().invoke(cli, args, env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(("value", "expected"), [
    ('{"teams": ["app.team"]}', "SPENDSTREAM_OTLP_ATTRIBUTES names 'teams', which a UsageEvent does not have; use team"),
    ('{"team": "app.team"', "SPENDSTREAM_OTLP_ATTRIBUTES: not valid JSON"),
])
def test_a_bad_otlp_attribute_mapping_names_the_variable(nothing_listening: dict[str, str], value: str, expected: str) -> None:
    assert expected in in_process({**nothing_listening, "SPENDSTREAM_OTLP_ATTRIBUTES": value}, "otlp")


def test_the_otlp_receiver_on_a_taken_port_says_so(nothing_listening: dict[str, str]) -> None:
    """The address is taken before any broker is tried."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = in_process({**nothing_listening, "SPENDSTREAM_OTLP_PORT": str(port)}, "otlp")
    assert f"cannot listen on 127.0.0.1:{port}" in line and "SPENDSTREAM_OTLP_PORT" in line


def test_the_worker_without_a_broker_says_where_it_looked(nothing_listening: dict[str, str]) -> None:
    done = spendstream(nothing_listening, "worker")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # Its start line (password masked), then the one error line.
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("spendstream worker starting: Kafka " + nothing_listening["SPENDSTREAM_KAFKA_BOOTSTRAP"])
    assert "someone:***@" in lines[0] and "roles all" in lines[0] and "partitions" in lines[0]
    assert "cannot reach Kafka" in lines[1]
    assert "s3cret-pw" not in done.stderr


@pytest.mark.integration
def test_missing_topic_names_the_command(stack_env: dict[str, str]) -> None:
    # An embedded broker with none of this run's topics created.
    for args in (["budgets", "list"], ["budgets", "rm", "nope"]):
        done = spendstream(stack_env, *args)
        assert_one_line(done, "does not exist", "spendstream topics create")
        assert "Unclosed" not in done.stderr


def test_a_real_bug_keeps_its_traceback() -> None:
    @click.group(cls=Group)
    def group() -> None:
        pass

    @group.command()
    def broken() -> None:
        raise KeyError("a bug")

    result = CliRunner().invoke(group, ["broken"])
    assert isinstance(result.exception, KeyError)
    assert one_line(KeyError("a bug")) is None and one_line(ConnectionError("some other")) is None


def all_commands() -> list[tuple[str, click.Command]]:
    from streams.cli.main import _register_ledger_commands, cli

    _register_ledger_commands()
    found = []

    def walk(command: click.Command, path: str) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "spendstream")
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{path} {param.opts[0]}" for path, command in all_commands() for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []
    assert len(all_commands()) > 20  # the walk found the groups' commands too


def test_a_bad_argument_is_one_line_pointing_at_help() -> None:
    from streams.cli.main import cli

    for args, expected in ((["emit", "--provider", "x"], "--model"),
                           (["budgets", "set", "b", "--scope", "team=a", "--amount", "1", "--period", "year"], "--period"),
                           (["no-such-command"], "no-such-command")):
        result = CliRunner().invoke(cli, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert expected in lines[0] and "--help`" in lines[0]
