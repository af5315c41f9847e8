"""The gRPC servicer: converts messages to core calls and back, nothing else."""

from __future__ import annotations

import grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from service.core import Recommendations, RecommenderCore


def _items(result: Recommendations) -> list[pb.ScoredItem]:
    return [pb.ScoredItem(item_id=i.item_id, score=i.score, reason=i.reason) for i in result.items]


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, core: RecommenderCore) -> None:
        self.core = core

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        result = self.core.recommend(
            request.user_id, request.k, list(request.exclude_item_ids), request.exclude_purchased
        )
        return pb.RecommendResponse(
            items=_items(result), model_version=result.model_version, fallback=result.fallback
        )

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        result = self.core.similar_items(request.item_id, request.k)
        return pb.SimilarItemsResponse(items=_items(result), model_version=result.model_version)
