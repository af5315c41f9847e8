"""A no-op Recommender server: the ceiling a Python gRPC server reaches on this machine.

It answers every RPC at once with a fixed response of the same shape and size as recsvc's
(k items with ids, scores and reasons, a version, a recommendation id), through the same
grpc.aio stack and generated code. recsvc's throughput as a ratio of this one's, measured in
the same run with the same client, is what is left of our own overhead.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


class NoopServicer(pb_grpc.RecommenderServicer):
    def __init__(self, k: int, item_ids: list[str]) -> None:
        items = [
            pb.ScoredItem(item_id=item_ids[i % len(item_ids)], score=1.0 - i / k, reason="personal")
            for i in range(k)
        ]
        self.recommend = pb.RecommendResponse(
            items=items, model_version="noop", recommendation_id=uuid.uuid4().hex
        )
        self.similar = pb.SimilarItemsResponse(items=items, model_version="noop")
        # The frontend calls' answers, each the size of recsvc's for the same request.
        self.rank = pb.RankItemsResponse(
            items=[*items, *items, *items, *items, *items],  # RankItems returns its 50 candidates
            model_version="noop",
            recommendation_id=uuid.uuid4().hex,
            strategy="personal",
            lifecycle_stage="active",
        )
        self.page = pb.RecommendPageResponse(
            rows=[
                pb.PageRow(name=f"row{n}", kind="for_you", title=f"Row {n}", items=items)
                for n in range(5)
            ],
            model_version="noop",
            recommendation_id=uuid.uuid4().hex,
            lifecycle_stage="active",
        )
        self.categories = pb.RecommendCategoriesResponse(
            categories=[pb.WeightedTag(name=f"category-{n}", weight=0.2) for n in range(5)],
            model_version="noop",
        )
        self.viewed = pb.RecentlyViewedResponse(
            items=[pb.ViewedItem(item_id=i.item_id, timestamp_ms=1_700_000_000_000) for i in items]
        )

    async def Recommend(self, request, context):
        return self.recommend

    async def SimilarItems(self, request, context):
        return self.similar

    async def RecordEvents(self, request, context):
        return pb.RecordEventsResponse(recorded=len(request.events))

    async def RankItems(self, request, context):
        return self.rank

    async def FrequentlyBoughtTogether(self, request, context):
        return self.recommend

    async def RecommendPage(self, request, context):
        return self.page

    async def RecommendCategories(self, request, context):
        return self.categories

    async def RecentlyViewed(self, request, context):
        return self.viewed


async def serve_noop(host: str, port: int, k: int, item_ids: list[str]) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(NoopServicer(k, item_ids), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"recsvc noop-server: listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
