"""Server assembly and lifecycle: factory, model loading, health, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.v1 import recommender_pb2, recommender_pb2_grpc
from service.core import RecommenderCore
from service.interceptors import ErrorMappingInterceptor
from service.servicer import RecommenderServicer

log = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerParts:
    server: grpc.aio.Server
    core: RecommenderCore
    health: health_aio.HealthServicer


def create_server(
    core: RecommenderCore, servicer: RecommenderServicer | None = None
) -> ServerParts:
    """An unstarted server with every service registered and no port bound.

    Health reports NOT_SERVING until the caller marks it otherwise (once a model has loaded).
    """
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    recommender_pb2_grpc.add_RecommenderServicer_to_server(
        servicer or RecommenderServicer(core), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return ServerParts(server, core, health)


async def set_health(health: health_aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await health.set(name, status)


class ModelWatcher:
    """Loads the store's current version, and any later one, off the event loop."""

    def __init__(self, store: ModelStore, parts: ServerParts, interval: float) -> None:
        self.store = store
        self.parts = parts
        self.interval = interval
        self._failed: str | None = None

    async def refresh(self) -> None:
        version = self.store.current_version()
        if version is None or version in (self.parts.core.version, self._failed):
            return
        try:
            model = await asyncio.to_thread(PublishedModel.load, self.store.path(version))
        except Exception:
            self._failed = version
            log.exception(
                "model %s failed to load; still serving %s", version, self.parts.core.version
            )
            return
        previous = self.parts.core.version
        self.parts.core.swap(model)
        log.info("serving model %s (was %s)", version, previous)
        await set_health(self.parts.health, SERVING)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)


async def serve(
    model_dir: Path,
    host: str = "127.0.0.1",
    port: int = 50051,
    reload_interval: float = 5.0,
    grace: float = 10.0,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains requests in flight for up to `grace` s."""
    parts = create_server(RecommenderCore())
    bound = parts.server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await set_health(parts.health, NOT_SERVING)
    await parts.server.start()
    log.info("listening on %s:%d (model dir %s)", host, bound, model_dir)
    print(f"recsvc serve: listening on {host}:{bound}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(ModelWatcher(ModelStore(model_dir), parts, reload_interval).run())
    await stop.wait()
    log.info("stopping: draining requests in flight (up to %.0fs)", grace)
    watcher.cancel()
    await shutdown(parts, grace)
    print("recsvc serve: stopped", flush=True)


async def shutdown(parts: ServerParts, grace: float) -> None:
    """Reports NOT_SERVING, refuses new calls, and lets calls in flight finish within `grace`."""
    await parts.health.enter_graceful_shutdown()
    await parts.server.stop(grace)
