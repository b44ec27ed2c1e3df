"""The deployment files agree with the code: ``docker-compose.yml``, ``Dockerfile`` and the
README's table of variables.

Docker is not needed: the compose file is parsed as YAML (with compose's ``${VAR:-default}``
and ``${VAR:?message}`` interpolation done here), every ``SPENDSTREAM_*`` variable it or the
image sets must be a field of :class:`streams.settings.Settings` and valid for it, the
workers must listen on the container's address with a token that compose requires, and
their health check, run as written against the worker's real Host/token middleware, must
pass on a ready worker and fail on one that is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from streams import web_auth
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
PREFIX = "SPENDSTREAM_"
FIELDS = {PREFIX + name.upper() for name in Settings.model_fields}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation of ``value``; a required variable that is missing raises."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        given = variables.get(name)
        if op and op.endswith("?") and (given is None or (op == ":?" and given == "")):
            raise LookupError(f"{name}: {arg}")
        if op and op.endswith("-") and (given is None or (op == ":-" and given == "")):
            return arg
        return given or ""
    return INTERPOLATION.sub(one, value)


def spendstream_variables() -> dict[str, dict[str, str]]:
    """Every SPENDSTREAM_* variable compose sets, by service, plus the image's (``Dockerfile``)."""
    found = {name: {k: v for k, v in environment(s).items() if k.startswith(PREFIX)} for name, s in services().items()}
    found["Dockerfile"] = dict(re.findall(r"\b(SPENDSTREAM_\w+)=(\S+)", DOCKERFILE.read_text()))
    return found


def readme_table_variables() -> set[str]:
    """The variables named in the first column of the table in "Running against real Kafka
    and ClickHouse"; ``SPENDSTREAM_A_B`` / ``_C`` names the field ``SPENDSTREAM_A_C`` (the
    suffix replaces one or more trailing words of the first name)."""
    section = README.read_text().split("## Running against real Kafka and ClickHouse", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first, *suffixes = re.findall(r"`([A-Z_]+)`", line.split("|")[1])
        assert first.startswith(PREFIX), line
        names.add(first)
        words = first.split("_")
        for suffix in suffixes:
            candidates = {"_".join(words[:k]) + suffix for k in range(2, len(words))} & FIELDS
            assert len(candidates) == 1, f"README: {suffix} after {first} names {sorted(candidates) or 'no setting'}"
            names |= candidates
    return names


def test_every_variable_compose_and_the_image_set_is_a_setting() -> None:
    for where, variables in spendstream_variables().items():
        unknown = sorted(set(variables) - FIELDS)
        assert not unknown, f"{where} sets {unknown}, which streams/settings.py does not read"


def test_every_service_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    operator = {"SPENDSTREAM_WEB_TOKEN": "a-token", "CLICKHOUSE_PASSWORD": "a-password"}
    image = spendstream_variables()["Dockerfile"]
    for name, service in services().items():
        variables = {k: v for k, v in environment(service).items() if k.startswith(PREFIX)}
        if not variables:
            continue
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            monkeypatch.delenv(key)
        for key, value in {**image, **variables}.items():
            monkeypatch.setenv(key, interpolate(value, operator))
        Settings()  # raises on a value of the wrong type or out of range


def test_workers_listen_on_the_container_address_with_a_required_token() -> None:
    worker = services()["worker"]
    env = environment(worker)
    assert env["SPENDSTREAM_WEB_HOST"] == "0.0.0.0"
    # No default: compose refuses to start without the operator's token.
    token = env["SPENDSTREAM_WEB_TOKEN"]
    assert re.fullmatch(r"\$\{SPENDSTREAM_WEB_TOKEN:\?[^}]+\}", token), token
    with pytest.raises(LookupError, match="SPENDSTREAM_WEB_TOKEN"):
        interpolate(token, {})
    with pytest.raises(LookupError):
        interpolate(token, {"SPENDSTREAM_WEB_TOKEN": ""})
    assert interpolate(token, {"SPENDSTREAM_WEB_TOKEN": "abc"}) == "abc"
    # Other containers reach the workers by the service's name: the Host check lets it in.
    assert "worker" in json.loads(env["SPENDSTREAM_WEB_ALLOWED_HOSTS"])


def test_published_ports_are_on_the_hosts_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface of the host"


def test_clickhouse_dsn_is_the_compose_server_with_its_credentials() -> None:
    all_services = services()
    clickhouse = environment(all_services["clickhouse"])
    for name in ("init", "worker"):
        env = environment(all_services[name])
        assert env["SPENDSTREAM_CLICKHOUSE_DSN"] == "http://clickhouse:8123"
        assert env["SPENDSTREAM_CLICKHOUSE_DATABASE"] == clickhouse["CLICKHOUSE_DB"]
        assert env["SPENDSTREAM_CLICKHOUSE_USERNAME"] == clickhouse["CLICKHOUSE_USER"]
        assert env["SPENDSTREAM_CLICKHOUSE_PASSWORD"] == clickhouse["CLICKHOUSE_PASSWORD"]


def test_the_image_is_a_regular_install_of_the_package() -> None:
    installs = [line for line in DOCKERFILE.read_text().splitlines() if "pip install" in line]
    assert installs and all(" -e" not in line and "--editable" not in line for line in installs), installs


def test_the_readme_table_names_every_setting_compose_sets() -> None:
    documented = readme_table_variables()
    stale = sorted(documented - FIELDS)
    assert not stale, f"the README's table names {stale}, which are not settings"
    set_somewhere = set().union(*spendstream_variables().values())
    missing = sorted(set_somewhere - documented)
    assert not missing, f"docker-compose.yml or the Dockerfile sets {missing}; the README's table does not name them"
    for required in ("SPENDSTREAM_REPLICATION_FACTOR", "SPENDSTREAM_WORKER_DATA_DIR", "SPENDSTREAM_WEB_TOKEN",
                     "SPENDSTREAM_WEB_ALLOWED_HOSTS"):
        assert required in documented
    assert "http://host:8123" in README.read_text()


async def test_worker_healthcheck_passes_when_ready_and_fails_when_not(unused_tcp_port: int) -> None:
    """The compose health check, as written (its port swapped for a free one), against the
    worker's middleware with the compose settings: no token needed for /ready, and the
    Host it sends passes the check."""
    worker = services()["worker"]
    env = environment(worker)
    check = worker["healthcheck"]["test"]
    assert check[0] == "CMD" and "/ready" in " ".join(check), check
    port = env.get("SPENDSTREAM_WEB_PORT", "6066")
    assert f":{port}/ready" in " ".join(check)
    argv = [sys.executable if arg == "python" else arg.replace(f":{port}/", f":{unused_tcp_port}/") for arg in check[1:]]

    settings = Settings(web_host=env["SPENDSTREAM_WEB_HOST"], web_token="a-token",
                        web_allowed_hosts=json.loads(env["SPENDSTREAM_WEB_ALLOWED_HOSTS"]))
    ready = {"now": False}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ready": ready["now"]}, status=200 if ready["now"] else 503)

    app = web.Application(middlewares=[web_auth.middleware(settings)])
    app.router.add_get("/ready", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        async def run() -> int:
            process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                           stderr=asyncio.subprocess.DEVNULL)
            return await asyncio.wait_for(process.wait(), timeout=30)

        assert await run() != 0
        ready["now"] = True
        assert await run() == 0
    finally:
        await runner.cleanup()
