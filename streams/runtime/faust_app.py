"""The Faust app as spendstream configures it, and the few ways it leans on Faust's insides.

``streams/app.py`` declares the topology; how Faust must be set up for it (broker
credentials, a short session timeout, stream buffers, the web server behind the token,
bounded topics for chunky messages, table writes made from a batch) lives here, so the
topology reads as a table of contents and the Faust specifics stay behind one fence.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.streams import _current_event
from faust.web import View

from streams.settings import Settings

# Every topic carries bytes: values are Avro or Arrow already, keys plain text.
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def create(settings: Settings, *, web_middlewares: Sequence[Callable[..., Any]] = ()) -> faust.App:
    """The worker's Faust app: broker, tables' store and web server from ``settings``.

    Faust's own pages that list tables and route requests between workers are off; every
    page left goes through ``web_middlewares`` (the token and Host checks).
    """
    return faust.App(
        settings.consumer_group(),
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings),
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout / 3),
        store=settings.table_store,
        table_standby_replicas=settings.standby_replicas,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=65536,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.advertised_url,
        web_application_options={"middlewares": list(web_middlewares)},
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
    )


def add_pages(app: faust.App, routes: Mapping[str, Mapping[str, Callable[[Any], Awaitable[Any]]]]) -> None:
    """Serve plain aiohttp handlers (``{path: {method: handler(request)}}``, as the dashboard
    declares them) among the worker's pages: one Faust view per path, whose methods call
    the handlers with the aiohttp request Faust's driver passes."""
    for path, methods in routes.items():
        members = {method.lower(): _calling(handler) for method, handler in methods.items()}
        app.page(path)(type(f"page{path.replace('/', '_')}", (View,), members))


def _calling(handler: Callable[[Any], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def method(view: View, request: Any, **match_info: Any) -> Any:
        return await handler(request)

    return method


def _broker_credentials(s: Settings) -> Any:
    options = s.kafka_client_options()
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    return options.get("ssl_context")


def run_only(app: faust.App, *, agents: Iterable[faust.types.AgentT], tables: Iterable[faust.types.TableT]) -> None:
    """Keep only these of the declared agents and tables in this worker (its roles).

    Call before the worker starts. A worker subscribes to the topics its agents iterate and
    to its tables' changelogs; Faust's assignor gives a topic's partitions only to the
    members subscribed to it, so the others' partitions go to the workers that run them.
    Faust has no public way to forget a table: the manager's index of changelog topics
    (consulted at every assignment) loses it too.
    """
    keep_agents, keep_tables = set(agents), set(tables)
    for name, agent in list(app.agents.items()):
        if agent not in keep_agents:
            del app.agents[name]
    for name, table in list(app.tables.items()):
        if table not in keep_tables:
            del app.tables[name]
            app.tables._changelogs.pop(table.changelog_topic.get_topic_name(), None)


def chunk_topic(app: faust.App, name: str, buffered: int) -> faust.TopicT:
    """A topic whose messages each carry a chunk's worth (thousands of rows, scopes or
    keys): its agent buffers ``buffered`` of them, so that an agent falling behind leaves
    its backlog in Kafka, not in memory. ``app.topic`` drops its ``maxsize`` argument
    (faust-streaming 0.15.3), so the bound is set on the topic, where its agent's buffer
    reads it."""
    topic = app.topic(name, **RAW)
    topic.maxsize = buffered
    return topic


def make_current(event: Any) -> None:
    """Make ``event`` current for table writes in this task.

    Faust sends a table change to the changelog partition of the current event, a context
    variable; a batch holds events of several partitions, so the states make each current
    in turn. Only the context variable is set: the stream's own current-event slot is what
    ``take_events`` reads when it buffers the next message, and moving it there loses
    messages.
    """
    _current_event.set(weakref.ref(event))
