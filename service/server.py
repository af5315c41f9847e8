"""Server assembly and lifecycle: factory, model loading and hot reload, health, graceful drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import Collector

from recsvc.access import ApiKeys
from recsvc.config import ServingConfig
from recsvc.errors import BadInput, StoreUnavailable
from recsvc.events import EventStore, open_event_store, store_url
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.service.interceptors import (
    AuthInterceptor,
    ErrorMappingInterceptor,
    WrappedRegistration,
    WrappingInterceptor,
)
from recsvc.service.observability import Metrics
from recsvc.service.servicer import RecommenderServicer
from recsvc.serving.core import RecommenderCore
from recsvc.serving.model import ServingModel
from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
LIVENESS_SERVICE = "liveness"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The role each method needs beyond "client" (a shop frontend: recommendations and events).
# Customers' personal data, alone or in bulk, is for analysts; operations are for admins.
REQUIRED_ROLE = {
    "GetUserProfile": "analyst",
    "ListSegments": "analyst",
    "GetSegment": "analyst",
    "FindAudience": "analyst",
    "ReloadModel": "admin",
    "ForgetUser": "admin",
    "CreateCampaign": "admin",
    "GetCampaign": "admin",
    "ListCampaigns": "admin",
}
# How often buffered impressions (for experiment reports) are written to the event store.
IMPRESSION_FLUSH_SECONDS = 1.0
# How often a worker takes in events and deletions stored by the other workers.
SYNC_SECONDS = 0.25
# How often long-lived objects are moved out of the cyclic collector's full scans.
FREEZE_SECONDS = 30.0


def announce(line: str) -> None:
    """A line for the operator (and scripts) on stdout, in one write: workers share the stream
    with each other's logs, and print's separate write of the newline (stdout unbuffered) let
    another process's line land in the middle of it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class ServerParts:
    server: grpc.aio.Server
    core: RecommenderCore
    health: health_aio.HealthServicer
    metrics: Metrics = field(default_factory=Metrics)


def create_server(
    core: RecommenderCore,
    servicer: RecommenderServicer | None = None,
    api_keys: ApiKeys | None = None,
    metrics: Metrics | None = None,
) -> ServerParts:
    """An unstarted server with every service registered and no port bound.

    Health reports NOT_SERVING until the caller marks it otherwise (once a model has loaded).
    """
    metrics = metrics or Metrics()
    servicer = servicer or RecommenderServicer(core)
    servicer.metrics = metrics  # fallbacks and stored events are counted where they are known
    interceptors: list[WrappingInterceptor] = [ErrorMappingInterceptor(metrics)]
    if api_keys is not None:
        interceptors.append(AuthInterceptor(api_keys, SERVICE_NAME, REQUIRED_ROLE))
    size = core.config.limits.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ],
    )
    # Every unary method is intercepted (errors mapped, calls timed and logged, keys checked)
    # through handlers wrapped once here, not through grpc's per-call interceptor chain.
    wrapped = WrappedRegistration(
        server,
        interceptors,
        {f"/{SERVICE_NAME}/{name}": h for name, h in servicer.wire_handlers().items()},
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(
        servicer,
        wrapped,  # type: ignore[arg-type]
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, wrapped)  # type: ignore[arg-type]
    # Reflection (a stream, which nothing intercepts) checks that it is given an aio server.
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return ServerParts(server, core, health, metrics)


async def set_health(health: health_aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await health.set(name, status)


class ModelWatcher:
    """Loads the store's current version, and any later one, off the event loop.

    A new version is loaded and checked (it must answer a request) in a thread, then swapped
    in with one reference assignment; one that fails is refused and the old model keeps
    serving. Versions pinned by an experiment variant are loaded the same way.
    """

    def __init__(self, store: ModelStore, parts: ServerParts, interval: float) -> None:
        self.store = store
        self.parts = parts
        self.interval = interval
        self._failed: set[str] = set()
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            core = self.parts.core
            version = self.store.current_version()
            if version is not None and version not in (core.version, *self._failed):
                serving = await self._load(version)
                if serving is not None:
                    previous = core.version
                    core.swap(serving)
                    # What a model load allocated lives until the next swap: move it out of
                    # the collector's reach, so full collections stay short under load.
                    gc.collect()
                    gc.freeze()
                    self.parts.metrics.model_swapped(
                        version, str(serving.published.manifest.get("model_type", ""))
                    )
                    log.info("serving model %s (was %s)", version, previous)
                    await set_health(self.parts.health, SERVING)
            for pinned in core.pinned_versions() - {*core.pinned_loaded(), *self._failed}:
                serving = await self._load(pinned)
                if serving is not None:
                    core.pin(serving)
                    log.info("loaded version %s for an experiment variant", pinned)

    async def _load(self, version: str) -> ServingModel | None:
        core = self.parts.core
        try:
            published = await asyncio.to_thread(PublishedModel.load, self.store.path(version))
            return await asyncio.to_thread(core.prepare, published)
        except Exception:
            self._failed.add(version)
            log.exception(
                "model %s failed to load or check; still serving %s", version, core.version
            )
            return None

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)


async def flush_impressions(core: RecommenderCore, store: EventStore) -> None:
    """Writes buffered impressions every second, off the event loop."""
    while True:
        await asyncio.sleep(IMPRESSION_FLUSH_SECONDS)
        taken = core.take_impressions()
        if taken:
            try:
                await asyncio.to_thread(store.record_impressions, taken)
            except StoreUnavailable as error:
                core.outages.failed(error, "storing impressions")
                core.keep_impressions(taken)  # written with the next ones, once it is back
            except Exception:  # not an outage, a bug: logged, and the flushing goes on
                log.exception("could not store %d impressions", len(taken))


async def keep_full_collections_short() -> None:
    """Every FREEZE_SECONDS, collects the young generations and moves what survived out of the
    cyclic collector's full scans. The caches (lists, real-time state) hold a growing number of
    long-lived objects, and a full collection scans all of them while nothing is answered: 116 ms
    three minutes into bench/soak.py, and the longer the fuller the caches. Cache entries are
    freed by reference counting when evicted, so freezing them loses nothing."""
    while True:
        await asyncio.sleep(FREEZE_SECONDS)
        gc.collect(1)
        gc.freeze()


async def keep_in_sync(core: RecommenderCore) -> None:
    """Takes in other processes' events and deletions: as soon as the store announces one
    (Redis), or every SYNC_SECONDS (SQLite)."""
    store = core.event_store
    if store is None:
        return
    while True:
        try:
            await asyncio.to_thread(store.wait_for_change, SYNC_SECONDS)
            await asyncio.to_thread(core.sync)
            core.outages.succeeded()
        except StoreUnavailable as error:
            core.outages.failed(error, "reading other servers' events")
            await asyncio.sleep(SYNC_SECONDS)
        except Exception:  # not an outage, a bug: logged, and the syncing goes on
            log.exception("could not read the event store")
            await asyncio.sleep(SYNC_SECONDS)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    reload_interval: float = 5.0
    grace: float = 10.0
    metrics_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    event_store: str = ""
    quiet: bool = False  # a worker of several: the parent prints the listening line
    log_format: str = "json"
    access_log: bool = True


def check_model_dir(model_dir: Path, config: ServingConfig) -> str:
    """BadInput for a model directory that does not exist (a typo must not become an empty
    store that waits forever) or an experiment variant pinned to a version it does not hold;
    otherwise a line saying what will be served."""
    store = ModelStore(model_dir)
    store.check_exists()
    published = store.versions()
    for experiment in config.experiments[:1]:
        for variant in experiment.variants:
            if variant.model_version and variant.model_version not in published:
                raise BadInput(
                    f"experiment {experiment.name!r}, variant {variant.name!r}: model_version "
                    f"{variant.model_version!r} is not published in {model_dir} "
                    f"(published: {', '.join(published) or 'none'})"
                )
    current = store.current_version()
    if current is None:
        return f"no model published in {model_dir} yet: NOT_SERVING until one is"
    return f"serving model {current} from {model_dir}"


def _credentials(options: ServeOptions) -> grpc.ServerCredentials | None:
    if options.tls_cert is None and options.tls_key is None:
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise BadInput("TLS needs both --tls-cert and --tls-key")
    try:
        pair = (options.tls_key.read_bytes(), options.tls_cert.read_bytes())
    except OSError as exc:
        raise BadInput(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([pair])


async def serve(
    model_dir: Path,
    config: ServingConfig,
    options: ServeOptions,
    on_ready: Callable[[], object] | None = None,
    collectors: Sequence[Collector] = (),
) -> None:
    """Serves until SIGTERM or SIGINT, then drains requests in flight for up to `grace` s.
    `collectors` add metrics of the caller's own (a worker pool's counts) to /metrics."""
    api_keys = ApiKeys.load(Path(config.api_keys_file)) if config.api_keys_file else None
    credentials = _credentials(options)
    store = open_event_store(
        store_url(model_dir, options.event_store or config.event_store),
        timeout=config.event_store_timeout_s,
    )
    core = RecommenderCore(config, store)
    servicer = RecommenderServicer(core)
    parts = create_server(core, servicer, api_keys=api_keys)
    for collector in collectors:
        parts.metrics.registry.register(collector)
    watcher = ModelWatcher(ModelStore(model_dir), parts, options.reload_interval)
    servicer.reload = watcher.refresh
    address = f"{options.host}:{options.port}"
    bound = (
        parts.server.add_secure_port(address, credentials)
        if credentials is not None
        else parts.server.add_insecure_port(address)
    )
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    if options.metrics_port is not None:
        metrics_port = parts.metrics.serve_http(options.host, options.metrics_port)
        announce(f"recsvc serve: metrics on http://{options.host}:{metrics_port}/metrics")
    await set_health(parts.health, NOT_SERVING)
    # Alive (answering on its event loop) before any model is loaded: what a liveness probe
    # asks, so that an empty model store makes pods unready, not restarted over and over.
    await parts.health.set(LIVENESS_SERVICE, SERVING)
    if on_ready is not None:
        # A worker of several (a replacement too) loads the current model, if any, before it
        # takes connections: one the kernel hands it must not find it still loading.
        await watcher.refresh()
    await parts.server.start()
    log.info("listening on %s:%d (model dir %s)", options.host, bound, model_dir)
    if not options.quiet:
        announce(
            f"recsvc serve: listening on {options.host}:{bound}"
            + (" (TLS)" if credentials else "")
            + (", API keys required" if api_keys else "")
        )
    if on_ready is not None:
        on_ready()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(flush_impressions(core, store)),
        asyncio.create_task(keep_in_sync(core)),
        asyncio.create_task(keep_full_collections_short()),
    ]
    await stop.wait()
    log.info("stopping: draining requests in flight (up to %.0fs)", options.grace)
    for task in tasks:
        task.cancel()
    await shutdown(parts, options.grace)
    core.close()
    try:
        store.record_impressions(core.take_impressions())
    except StoreUnavailable as error:
        log.error("impressions not stored at shutdown: %s", error)
    store.close()
    if not options.quiet:
        announce("recsvc serve: stopped")


async def shutdown(parts: ServerParts, grace: float) -> None:
    """Reports NOT_SERVING, refuses new calls, and lets calls in flight finish within `grace`."""
    await parts.health.enter_graceful_shutdown()
    await parts.server.stop(grace)
