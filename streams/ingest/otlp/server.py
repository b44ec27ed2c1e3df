"""``spendstream otlp``: the OTLP/HTTP receiver of GenAI spans.

A stateless process (run several behind a load balancer): it keeps nothing but counters,
and answers an exporter only after Kafka has the events, so a request that was not
acknowledged is retried by the exporter, and a retry is counted once (event ids derive
from trace and span ids). Its pages pass the checks of :mod:`streams.web_auth` (Host,
cross-site, the worker's bearer token) with one exception: ``/ready``, for health checks.

``POST /v1/traces``, in these steps:

1. Until the producer has started, and once stopping, answer 503 (exporters retry).
2. The ``Content-Type`` must be one of OTLP's encodings (protobuf or JSON), else 415.
3. Read the body, gzip undone, at most ``SPENDSTREAM_OTLP_MAX_BODY_BYTES`` (else 413).
4. Decode the export request; a body that is not one gets 400 and a ``google.rpc.Status``
   saying what is wrong, and nothing is published.
5. Map each span (:class:`~streams.ingest.otlp.mapping.SpanMapper`), counting what became
   of it; spans without ``gen_ai.*`` attributes are only counted.
6. Publish the events through the SDK producer and wait for the broker's acknowledgement
   of all of them; if Kafka fails, answer 503 and count nothing (the exporter retries).
7. Answer 200 with the export response, a partial success naming the spans rejected.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from streams import web_auth
from streams.ingest.otlp.decode import (
    JSON,
    MalformedRequest,
    UnsupportedMediaType,
    decode_request,
    encode_response,
    encode_status,
    media_type,
    spans,
)
from streams.ingest.otlp.mapping import SpanMapper
from streams.sdk.producer import UsageProducer
from streams.settings import Settings

__all__ = ["OUTCOMES", "CannotListen", "Receiver", "serve"]

log = logging.getLogger("spendstream.otlp")

TRACES_PATH = "/v1/traces"
# google.rpc.Code values of the Status bodies.
_INVALID_ARGUMENT, _UNAVAILABLE = 3, 14
_RETRY_AFTER_SECONDS = "5"
# Per-span counters of /stats: the mapping's outcomes, and spans without gen_ai attributes.
OUTCOMES = ("recorded", "usage_missing", "failed_call", "not_a_call", "rejected", "not_gen_ai")
_MAX_REASONS = 5


class CannotListen(RuntimeError):
    """The receiver's address is taken or not this machine's."""


class Receiver:
    """The receiver's handlers, its producer and its counters."""

    def __init__(self, settings: Settings, mapper: SpanMapper) -> None:
        self.settings = settings
        self.mapper = mapper
        self.keys = mapper.keys
        self.producer: UsageProducer | None = None  # set once started: until then, and when stopping, 503
        self.counts: Counter[str] = Counter({name: 0 for name in OUTCOMES})
        self.requests: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[web_auth.middleware(self.settings, bind_host=self.settings.otlp_host)],
            client_max_size=self.settings.otlp_max_body_bytes,
        )
        app.router.add_post(TRACES_PATH, self.traces)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/ready", self.ready_page)
        return app

    async def traces(self, request: web.Request) -> web.Response:
        producer = self.producer
        if producer is None:                                                            # 1
            return self._status(503, JSON, _UNAVAILABLE, "starting or stopping; retry", "unavailable",
                                headers={"Retry-After": _RETRY_AFTER_SECONDS})
        try:                                                                            # 2
            kind = media_type(request.headers.get("Content-Type"))
        except UnsupportedMediaType as exc:
            return self._status(415, JSON, _INVALID_ARGUMENT, str(exc), "unsupported_media_type")
        body = await request.read()                                                     # 3
        try:                                                                            # 4
            export = decode_request(body, kind)
        except MalformedRequest as exc:
            return self._status(400, kind, _INVALID_ARGUMENT, str(exc), "malformed")
        events, rejected, counts = [], [], Counter[str]()                               # 5
        for span in spans(export, self.keys):
            if span is None:
                counts["not_gen_ai"] += 1
                continue
            mapped = self.mapper.map(span)
            counts[mapped.outcome] += 1
            if mapped.event is not None:
                events.append(mapped.event)
            elif mapped.outcome == "rejected":
                rejected.append(mapped.reason)
        if events:                                                                      # 6
            try:
                await producer.publish(events)
            except KafkaError as exc:  # the exporter retries the whole request: count none of it
                log.error("could not publish %d usage events to Kafka (%s); answered 503",
                          len(events), type(exc).__name__)
                return self._status(503, kind, _UNAVAILABLE, "Kafka did not take the usage events; retry",
                                    "unavailable", headers={"Retry-After": _RETRY_AFTER_SECONDS})
        self.counts.update(counts)                                                      # 7
        self.requests["accepted"] += 1
        message = ""
        if rejected:
            more = f" (and {len(rejected) - _MAX_REASONS} more)" if len(rejected) > _MAX_REASONS else ""
            message = "; ".join(rejected[:_MAX_REASONS]) + more
            log.warning("rejected %d of the request's spans: %s", len(rejected), message)
        return web.Response(body=encode_response(kind, len(rejected), message), content_type=kind)

    def _status(self, http: int, kind: str, code: int, message: str, counter: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.requests[counter] += 1
        return web.Response(status=http, body=encode_status(kind, code, message), content_type=kind, headers=headers)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"spans": dict(self.counts), "requests": dict(self.requests)})

    async def ready_page(self, request: web.Request) -> web.Response:
        ready = self.producer is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)


async def serve(settings: Settings, mapper: SpanMapper, *, announce: Any = print) -> None:
    """Run the receiver until SIGTERM or SIGINT: listen (a taken address fails at once),
    start the producer (Kafka must answer; until then requests get 503), then on a signal
    stop listening and close the producer (everything sent is delivered)."""
    web_auth.ensure_token(settings)
    receiver = Receiver(settings, mapper)
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.otlp_host, settings.otlp_port).start()
        except OSError as exc:
            raise CannotListen(
                f"cannot listen on {settings.otlp_host}:{settings.otlp_port} ({exc.strerror or exc}); "
                "set SPENDSTREAM_OTLP_HOST / SPENDSTREAM_OTLP_PORT to a free address of this machine"
            ) from exc
        producer = UsageProducer(settings)  # created here: one never started warns at exit
        await producer.start()  # stops its client if Kafka does not answer
    except BaseException:
        await runner.cleanup()
        raise
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        receiver.producer = producer
        announce(
            f"spendstream otlp: receiving OTLP/HTTP traces at http://{settings.otlp_host}:{settings.otlp_port}"
            f"{TRACES_PATH}, publishing usage events to {settings.usage_topic} at {settings.kafka_bootstrap}"
        )
        await stop.wait()
    finally:
        receiver.producer = None
        await runner.cleanup()  # waits for the requests in flight, whose events are then in Kafka
        await producer.stop()
