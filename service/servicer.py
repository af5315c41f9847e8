"""The gRPC servicer: converts messages to core calls and back, nothing else."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from recsvc.campaigns import Campaign, CampaignSpec
from recsvc.errors import InvalidArgument
from recsvc.service.observability import Metrics
from recsvc.serving.core import RecommenderCore
from recsvc.serving.values import NO_FILTERS, EventInput, Filters, Recommendations
from recsvc.v1 import LOAD_TEST_METADATA_KEY
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

# Recommend response bodies serialised once per cached list, by the identity of the core's
# (cached, immutable) item tuple; each call appends only its own recommendation id.
SERIALISED_LISTS = 4096
# Recommend requests parsed once per distinct request (a page reload sends the same bytes).
PARSED_REQUESTS = 16384
RECOMMENDATION_ID_TAG = b"\x2a"  # RecommendResponse field 5 (recommendation_id), length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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


def _load_test(context: grpc.aio.ServicerContext) -> bool:
    return any(key == LOAD_TEST_METADATA_KEY for key, _ in context.invocation_metadata() or ())


def _same_list(built: Recommendations, result: Recommendations) -> bool:
    """Everything but the recommendation id. The core's list cache decides the other fields
    with the list; comparing them keeps a response right should two results share a list."""
    return (
        built.items is result.items
        and built.model_version == result.model_version
        and built.fallback == result.fallback
        and built.variant == result.variant
        and built.strategy == result.strategy
        and built.lifecycle_stage == result.lifecycle_stage
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


class Completions:
    """Awaits the core's write futures on the event loop, waking it once per burst.

    asyncio.wrap_future wakes the loop (a write to its self-pipe, and a pass of the loop) for
    every future; the writer completes a whole group commit at once, so this collects the
    completions and hands them over in one wake-up."""

    def __init__(self) -> None:
        self._done: list[tuple[Future[int], asyncio.Future[int]]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wait(self, write: Future[int]) -> asyncio.Future[int]:
        """An asyncio future of the write's result; cancelling it withdraws the write."""
        loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        waiter.add_done_callback(lambda w: write.cancel() if w.cancelled() else None)
        write.add_done_callback(lambda f: self._completed(f, waiter))
        return waiter

    def _completed(self, write: Future[int], waiter: asyncio.Future[int]) -> None:
        with self._lock:
            self._done.append((write, waiter))
            first = len(self._done) == 1
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for write, waiter in done:
            if waiter.done():
                continue
            if write.cancelled():
                waiter.cancel()
            elif (error := write.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(write.result())


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Scoring runs on the event loop (a thread hop costs more than scoring a small catalogue;
    several worker processes give parallelism); writes go to the core's event writer, whose
    thread stores many calls' events in one commit.

    Recommend, the hot path, is served on the wire (`wire_handlers`): request bytes in,
    response bytes out. A repeated request is parsed once, and a cached list's response is
    serialised once; each call then pays for its own recommendation id only."""

    def __init__(
        self, core: RecommenderCore, reload: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.core = core
        self.reload = reload  # set by the server once its model watcher exists
        self.metrics: Metrics | None = None  # set by the server it is registered with
        self._parsed: dict[bytes, tuple[Any, ...]] = {}
        self._serialised: OrderedDict[int, tuple[Recommendations, bytes]] = OrderedDict()
        self._completions = Completions()

    def wire_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Methods registered without grpc's (de)serialisers, by name."""
        return {"Recommend": grpc.unary_unary_rpc_method_handler(self.recommend_wire)}

    async def recommend_wire(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Recommend from a serialised RecommendRequest to a serialised RecommendResponse."""
        arguments = self._parsed.get(request)
        if arguments is None:
            arguments = self._parse_recommend(request)
        result = self.core.recommend(
            *arguments,
            # Metadata is read only where it matters: when an experiment counts impressions.
            not (self.core.config.experiments and _load_test(context)),
        )
        if result.fallback and self.metrics is not None:
            self.metrics.fallbacks += 1
        recommendation_id = result.recommendation_id.encode()
        return (
            self._serialised_list(result)
            + RECOMMENDATION_ID_TAG
            + _varint(len(recommendation_id))
            + recommendation_id
        )

    def _parse_recommend(self, raw: bytes) -> tuple[Any, ...]:
        try:
            request = pb.RecommendRequest.FromString(raw)
        except DecodeError:
            raise InvalidArgument("the request is not a valid RecommendRequest") from None
        # Unset repeated and map fields are not copied: each read builds a container wrapper.
        arguments = (
            request.user_id,
            request.k,
            _filters(request.filters, request.exclude_item_ids),
            request.exclude_purchased,
            tuple(request.context_item_ids) if request.context_item_ids else (),
            dict(request.user_attributes) if request.user_attributes else None,
        )
        if len(self._parsed) >= PARSED_REQUESTS:
            del self._parsed[next(iter(self._parsed))]
        self._parsed[raw] = arguments
        return arguments

    def _serialised_list(self, result: Recommendations) -> bytes:
        """The response for a result less its recommendation id, serialised once per list."""
        key = id(result.items)
        hit = self._serialised.get(key)
        if hit is None or not _same_list(hit[0], result):
            body = pb.RecommendResponse(
                items=_convert(result.items),
                model_version=result.model_version,
                fallback=result.fallback,
                variant=result.variant,
                strategy=result.strategy,
                lifecycle_stage=result.lifecycle_stage,
            ).SerializeToString()
            hit = (result, body)  # holding the result keeps its items' id unique
            self._serialised[key] = hit
            if len(self._serialised) > SERIALISED_LISTS:
                self._serialised.popitem(last=False)
        return hit[1]

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
        if _load_test(context):
            return pb.RecordEventsResponse(recorded=len(self.core.check_events(events)))
        recorded = await self._stored(self.core.submit_events(events))
        if self.metrics is not None:
            self.metrics.events += recorded
        return pb.RecordEventsResponse(recorded=recorded)

    async def ForgetUser(
        self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetUserResponse:
        deleted = await self._stored(self.core.submit_forget(request.user_id, request.reason))
        return pb.ForgetUserResponse(events_deleted=deleted)

    async def _stored(self, write: Future[int]) -> int:
        """Waits for a write without holding a thread (many callers share one commit);
        StoreUnavailable past the store timeout."""
        timeout = self.core.config.event_store_timeout_s
        try:
            return await asyncio.wait_for(self._completions.wait(write), timeout)
        except TimeoutError:
            raise self.core.store_timed_out() from None

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

    async def GetUserProfile(
        self, request: pb.GetUserProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.UserProfile:
        profile = self.core.user_profile(request.user_id)
        rfm = profile["rfm"]
        return pb.UserProfile(
            user_id=profile["user_id"],
            attributes=profile["attributes"],
            top_categories=[pb.WeightedTag(name=n, weight=w) for n, w in profile["top_categories"]],
            top_brands=[pb.WeightedTag(name=n, weight=w) for n, w in profile["top_brands"]],
            price_band=profile["price_band"],
            active_hours_utc=profile["active_hours_utc"],
            active_weekdays=profile["active_weekdays"],
            rfm=pb.RFM(
                recency_days=rfm["recency_days"],
                frequency=rfm["frequency"],
                monetary=rfm["monetary"],
                r=rfm["r"],
                f=rfm["f"],
                m=rfm["m"],
                segment=rfm["segment"],
            ),
            lifecycle_stage=profile["lifecycle_stage"],
            rfm_segment_id=profile["rfm_segment_id"],
            cluster_segment_id=profile["cluster_segment_id"],
            first_seen_ms=profile["first_seen_ms"],
            last_seen_ms=profile["last_seen_ms"],
            fresh_events=profile["fresh_events"],
            model_version=profile["model_version"],
            churn_risk=profile["churn_risk"],
        )

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        segments = self.core.list_segments(request.kind)
        return pb.ListSegmentsResponse(
            segments=[_segment(s) for s in segments], model_version=self.core.version or ""
        )

    async def GetSegment(
        self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Segment:
        return _segment(self.core.get_segment(request.segment_id))

    async def RankItems(
        self, request: pb.RankItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankItemsResponse:
        result = self.core.rank_items(
            request.user_id,
            tuple(request.item_ids),
            _filters(request.filters),
            request.exclude_purchased,
            tuple(request.context_item_ids),
            dict(request.user_attributes) or None,
            not (self.core.config.experiments and _load_test(context)),
        )
        return pb.RankItemsResponse(
            items=_convert(result.items),
            unknown_item_ids=result.unknown_item_ids,
            left_out_item_ids=result.left_out_item_ids,
            model_version=result.model_version,
            variant=result.variant,
            recommendation_id=result.recommendation_id,
            strategy=result.strategy,
            lifecycle_stage=result.lifecycle_stage,
        )

    async def FrequentlyBoughtTogether(
        self, request: pb.FrequentlyBoughtTogetherRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        result = self.core.bought_together(
            tuple(request.item_ids),
            request.k,
            _filters(request.filters, request.exclude_item_ids),
            request.user_id,
            request.exclude_purchased,
        )
        return pb.RecommendResponse(
            items=_convert(result.items),
            model_version=result.model_version,
            fallback=result.fallback,
            strategy=result.strategy,
        )

    async def RecommendPage(
        self, request: pb.RecommendPageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendPageResponse:
        page = self.core.recommend_page(
            request.user_id,
            _filters(request.filters, request.exclude_item_ids),
            request.exclude_purchased,
            tuple(request.context_item_ids),
            dict(request.user_attributes) or None,
            not (self.core.config.experiments and _load_test(context)),
        )
        return pb.RecommendPageResponse(
            rows=[
                pb.PageRow(
                    name=r.name,
                    kind=r.kind,
                    title=r.title,
                    items=_convert(r.items),
                    anchor=r.anchor,
                )
                for r in page.rows
            ],
            model_version=page.model_version,
            variant=page.variant,
            recommendation_id=page.recommendation_id,
            lifecycle_stage=page.lifecycle_stage,
        )

    async def RecommendCategories(
        self, request: pb.RecommendCategoriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendCategoriesResponse:
        categories = self.core.recommend_categories(
            request.user_id,
            request.k,
            request.kind or "category",
            tuple(request.context_item_ids),
            dict(request.user_attributes) or None,
        )
        return pb.RecommendCategoriesResponse(
            categories=[pb.WeightedTag(name=n, weight=w) for n, w in categories],
            model_version=self.core.version or "",
        )

    async def RecentlyViewed(
        self, request: pb.RecentlyViewedRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecentlyViewedResponse:
        viewed = self.core.recently_viewed(request.user_id, request.k)
        return pb.RecentlyViewedResponse(
            items=[pb.ViewedItem(item_id=i, timestamp_ms=t) for i, t in viewed]
        )

    async def MergeUsers(
        self, request: pb.MergeUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.MergeUsersResponse:
        moved = await self._stored(
            self.core.submit_merge(request.anonymous_id, request.user_id, request.reason)
        )
        return pb.MergeUsersResponse(events_moved=moved)

    async def FindAudience(
        self, request: pb.FindAudienceRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindAudienceResponse:
        # Scores every user: off the event loop, so Recommend calls keep flowing meanwhile.
        audience = await asyncio.to_thread(
            self.core.find_audience,
            item_id=request.item_id,
            category=request.category,
            segment_id=request.segment_id,
            k=request.k,
            exclude_buyers=request.exclude_buyers,
            min_churn_risk=request.min_churn_risk if request.HasField("min_churn_risk") else None,
        )
        return pb.FindAudienceResponse(
            users=[
                pb.AudienceMember(user_id=u, score=s)
                for u, s in zip(audience.user_ids, audience.scores, strict=True)
            ],
            basis=audience.basis,
            model_version=audience.model_version,
        )

    async def CreateCampaign(
        self, request: pb.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> pb.CampaignSummary:
        spec = CampaignSpec(
            request.name,
            item_id=request.item_id,
            category=request.category,
            segment_id=request.segment_id,
            min_churn_risk=request.min_churn_risk if request.HasField("min_churn_risk") else None,
            stages=tuple(request.stages),
            attributes=tuple(sorted(request.attributes.items())),
            size=request.size,
            control_share=request.control_share,
            offer_items=tuple(request.offer_item_ids),
            offer_category=request.offer_category,
            offer_recommendations=request.offer_recommendations,
            conversion=request.conversion or "offered",
            window_days=request.window_days or 14.0,
            channel=request.channel,
            salt=request.salt,
        )
        # Ranks every user and reads the store: off the event loop, like FindAudience.
        campaign = await asyncio.to_thread(self.core.create_campaign, spec)
        return _campaign_summary(campaign)

    async def GetCampaign(
        self, request: pb.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> pb.CampaignResult:
        campaign, result = await asyncio.to_thread(self.core.campaign_with_report, request.name)
        arms = result["arms"]
        window_start, window_end = result["window"]
        return pb.CampaignResult(
            campaign=_campaign_summary(campaign),
            window_start_ms=window_start,
            window_end_ms=window_end,
            treatment=_campaign_arm(arms["treatment"]),
            control=_campaign_arm(arms["control"]),
            conversion_uplift=_uplift(result["conversion_uplift"]),
            revenue_per_member_uplift=_uplift(result["revenue_per_member_uplift"]),
            incremental_revenue=_uplift(result["incremental_revenue"]),
        )

    async def ListCampaigns(
        self, request: pb.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCampaignsResponse:
        campaigns = await asyncio.to_thread(self.core.campaigns)
        return pb.ListCampaignsResponse(campaigns=[_campaign_summary(c) for c in campaigns])


def _campaign_summary(campaign: Campaign) -> pb.CampaignSummary:
    treated = len(campaign.treatment)
    return pb.CampaignSummary(
        name=campaign.name,
        created_ms=campaign.created_ms,
        members=len(campaign.members),
        treatment=treated,
        control=len(campaign.members) - treated,
        control_share=campaign.control_share,
        channel=campaign.channel,
        conversion=campaign.conversion,
        window_days=campaign.window_days,
        offer_item_ids=campaign.offer_items,
        offer_category=campaign.offer_category,
        offer_recommendations=campaign.offer_recommendations,
        reach=campaign.reach,
        basis=campaign.criteria.get("basis", ""),
        model_version=campaign.criteria.get("model_version", ""),
    )


def _campaign_arm(arm: dict[str, Any]) -> pb.CampaignArm:
    revenue = arm["revenue_per_member"]
    low, high = arm["conversion_ci"]
    return pb.CampaignArm(
        members=arm["members"],
        converters=arm["converters"],
        conversion=arm["conversion"],
        conversion_low=low,
        conversion_high=high,
        revenue_per_member=revenue["value"],
        revenue_per_member_low=revenue["low"],
        revenue_per_member_high=revenue["high"],
        average_order_value=arm["average_order_value"],
    )


def _uplift(uplift: dict[str, Any]) -> pb.Uplift:
    low, high = uplift["ci"]
    return pb.Uplift(value=uplift["value"], low=low, high=high, p_value=uplift.get("p_value", 0.0))


def _segment(segment: dict[str, Any]) -> pb.Segment:
    return pb.Segment(
        id=segment["id"],
        kind=segment["kind"],
        name=segment["name"],
        size=segment["size"],
        top_categories=[
            pb.CategoryShare(category=c, share=s) for c, s in segment["top_categories"]
        ],
        average_order_value=segment["average_order_value"],
        stage_mix=segment["stage_mix"],
        method=segment["clustering"],
        churn_risk=segment.get("churn_risk"),
        high_churn_risk=segment.get("high_churn_risk", 0),
    )
