"""The gRPC servicer: converts messages to core calls and back, nothing else."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from service.core import NO_FILTERS, EventInput, Filters, RecommenderCore

# Converted lists, by the identity of the core's (cached, immutable) item tuples.
CONVERTED_LISTS = 4096


def _convert(items: Any) -> list[pb.ScoredItem]:
    return [pb.ScoredItem(item_id=i.item_id, score=i.score, reason=i.reason) for i in items]


def _filters(message: pb.Filters, exclude_item_ids: Any = ()) -> Filters:
    if not exclude_item_ids and message.ByteSize() == 0:
        return NO_FILTERS
    return Filters(
        include_categories=tuple(message.include_categories),
        exclude_categories=tuple(message.exclude_categories),
        exclude_item_ids=tuple(exclude_item_ids),
        available_only=message.available_only,
        min_price=message.min_price if message.HasField("min_price") else None,
        max_price=message.max_price if message.HasField("max_price") else None,
    )


def _model_info(info: dict[str, Any]) -> pb.ModelInfo:
    return pb.ModelInfo(
        version=info["version"],
        model_type=info["model_type"],
        trained_at=info["created_at"],
        n_users=info["n_users"],
        n_items=info["n_items"],
        metrics=info["metrics"],
        metric_variant=info["metric_variant"],
    )


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Scoring runs on the event loop (a thread hop costs more than scoring a small catalogue;
    several worker processes give parallelism); calls that write to disk run in a thread."""

    def __init__(
        self, core: RecommenderCore, reload: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.core = core
        self.reload = reload  # set by the server once its model watcher exists
        self._converted: OrderedDict[int, tuple[Any, list[pb.ScoredItem]]] = OrderedDict()

    def _recommended_items(self, items: Any) -> list[pb.ScoredItem]:
        """Protobuf items for a list, converted once while the core keeps reusing the list."""
        key = id(items)
        hit = self._converted.get(key)
        if hit is not None and hit[0] is items:
            return hit[1]
        converted = _convert(items)
        self._converted[key] = (items, converted)  # holding `items` keeps its id unique
        if len(self._converted) > CONVERTED_LISTS:
            self._converted.popitem(last=False)
        return converted

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        result = self.core.recommend(
            request.user_id,
            request.k,
            _filters(request.filters, request.exclude_item_ids),
            request.exclude_purchased,
            tuple(request.context_item_ids),
        )
        return pb.RecommendResponse(
            items=self._recommended_items(result.items),
            model_version=result.model_version,
            fallback=result.fallback,
            variant=result.variant,
            recommendation_id=result.recommendation_id,
        )

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        result = self.core.similar_items(
            request.item_id,
            request.k,
            _filters(request.filters, request.exclude_item_ids),
        )
        return pb.SimilarItemsResponse(
            items=_convert(result.items), model_version=result.model_version
        )

    async def PopularItems(
        self, request: pb.PopularItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PopularItemsResponse:
        result = self.core.popular_items(
            request.k,
            tuple(request.categories),
            request.trending,
            _filters(request.filters),
        )
        return pb.PopularItemsResponse(
            items=_convert(result.items), model_version=result.model_version
        )

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        events = [
            EventInput(
                user_id=e.user_id,
                item_id=e.item_id,
                event=e.event,
                timestamp_ms=e.timestamp_ms,
                quantity=e.quantity if e.HasField("quantity") else 1.0,
                price=e.price if e.HasField("price") else None,
                recommendation_id=e.recommendation_id,
            )
            for e in request.events
        ]
        recorded = await asyncio.to_thread(self.core.record_events, events)
        return pb.RecordEventsResponse(recorded=recorded)

    async def ForgetUser(
        self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetUserResponse:
        deleted = await asyncio.to_thread(self.core.forget_user, request.user_id, request.reason)
        return pb.ForgetUserResponse(events_deleted=deleted)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return _model_info(self.core.model_info())

    async def ReloadModel(
        self, request: pb.ReloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        if self.reload is not None:
            await self.reload()
        return _model_info(self.core.model_info())
