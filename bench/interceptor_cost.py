"""What recsvc's per-call interception costs: the no-op server with and without it.

Starts the no-op Recommender twice per repeat, once plain and once with its handlers wrapped by
recsvc's ErrorMappingInterceptor (timing, status counting, the access-log check) as
`recsvc serve` registers them, and drives both with the light client; prints calls/s and both
sides' CPU per call.

    .venv/bin/python bench/interceptor_cost.py [--repeats 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import grpc
from lightclient import closed_loop
from serving import start, stop

from recsvc.loadtest.noop import NoopServicer
from recsvc.service.interceptors import ErrorMappingInterceptor, WrappedRegistration
from recsvc.service.observability import Metrics
from recsvc.service.workers import free_port
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

METHOD = "/recsvc.v1.Recommender/Recommend"


async def serve(port: int, wrapped: bool) -> None:
    logging.getLogger("recsvc.access").setLevel(logging.WARNING)  # as --no-access-log
    server = grpc.aio.server()
    target = (
        WrappedRegistration(server, [ErrorMappingInterceptor(Metrics())]) if wrapped else server
    )
    servicer = NoopServicer(10, [f"i{n:04d}" for n in range(10)])
    pb_grpc.add_RecommenderServicer_to_server(servicer, target)  # type: ignore[arg-type]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("listening on", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", choices=["plain", "wrapped"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.port, args.serve == "wrapped"))
        return
    payloads = [
        pb.RecommendRequest(user_id=f"u{n:04d}", k=10).SerializeToString() for n in range(500)
    ]
    for _ in range(args.repeats):
        for mode in ("plain", "wrapped"):
            port = free_port("127.0.0.1")
            server = start(
                [sys.executable, __file__, "--serve", mode, "--port", str(port)], "listening on"
            )
            try:
                closed_loop(f"127.0.0.1:{port}", METHOD, payloads, 2.0, [server.pid])  # warm-up
                run = closed_loop(f"127.0.0.1:{port}", METHOD, payloads, args.seconds, [server.pid])
            finally:
                stop(server)
            print(f"{mode:<8} {json.dumps(run.as_dict())}", flush=True)


if __name__ == "__main__":
    main()
