"""A small command-line client over a real gRPC channel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.errors import BadInput
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


def _print(
    response: pb.RecommendResponse | pb.SimilarItemsResponse | pb.RankItemsResponse,
    as_json: bool,
    header: str,
) -> None:
    rows = [
        {"item_id": i.item_id, "score": round(i.score, 6), "reason": i.reason}
        for i in response.items
    ]
    fallback = getattr(response, "fallback", False)
    strategy = getattr(response, "strategy", "")
    stage = getattr(response, "lifecycle_stage", "")
    variant = getattr(response, "variant", "")
    recommendation_id = getattr(response, "recommendation_id", "")
    if as_json:
        print(
            json.dumps(
                {
                    "model_version": response.model_version,
                    "recommendation_id": recommendation_id,
                    "variant": variant,
                    "fallback": fallback,
                    "strategy": strategy,
                    "lifecycle_stage": stage,
                    "items": rows,
                }
            )
        )
        return
    served = (
        f", {strategy} for a{'n' if stage[:1] in 'aeiou' else ''} {stage} user" if stage else ""
    )
    print(f"{header} (model {response.model_version}{served})")
    if isinstance(response, pb.RankItemsResponse):
        for name, listed in (
            ("unknown, kept last", response.unknown_item_ids),
            ("left out by filters or exclusions", response.left_out_item_ids),
        ):
            if listed:
                print(f"{name}: {', '.join(listed)}")
    if recommendation_id:
        print(
            f"recommendation {recommendation_id}"
            + (f", experiment variant {variant}" if variant else "")
            + (", fallback: the model does not know this user" if fallback else "")
        )
    for rank, row in enumerate(rows, 1):
        print(f"{rank:4d}  {row['item_id']:<24} {row['score']:10.4f}  {row['reason']}")


@dataclass(frozen=True)
class Connection:
    """Where and how to call: target, optional API key, optional CA file for TLS."""

    target: str
    api_key: str = ""
    tls_ca: Path | None = None
    timeout: float = 5.0
    tls_server_name: str = ""  # the name in the server's certificate, when not the target's

    def channel(self) -> grpc.Channel:
        if self.tls_ca is None:
            return grpc.insecure_channel(self.target)
        if not self.tls_ca.is_file():
            raise BadInput(f"CA file {self.tls_ca} does not exist")
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())
        options = (
            [("grpc.ssl_target_name_override", self.tls_server_name)]
            if self.tls_server_name
            else []
        )
        return grpc.secure_channel(self.target, credentials, options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def recommend(
    connection: Connection,
    user_id: str,
    k: int,
    exclude: list[str],
    exclude_purchased: bool,
    context: list[str],
    as_json: bool,
) -> None:
    with connection.channel() as channel:
        response = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(
                user_id=user_id,
                k=k,
                exclude_item_ids=exclude,
                exclude_purchased=exclude_purchased,
                context_item_ids=context,
            ),
            timeout=connection.timeout,
            metadata=connection.metadata,
        )
    _print(response, as_json, f"top {k} for user {user_id}")


def similar(connection: Connection, item_id: str, k: int, as_json: bool) -> None:
    with connection.channel() as channel:
        response = pb_grpc.RecommenderStub(channel).SimilarItems(
            pb.SimilarItemsRequest(item_id=item_id, k=k),
            timeout=connection.timeout,
            metadata=connection.metadata,
        )
    _print(response, as_json, f"{k} items similar to {item_id}")


def record_event(connection: Connection, event: pb.Event) -> None:
    """Sends one event (an experiment's click or purchase, for instance)."""
    with connection.channel() as channel:
        response = pb_grpc.RecommenderStub(channel).RecordEvents(
            pb.RecordEventsRequest(events=[event]),
            timeout=connection.timeout,
            metadata=connection.metadata,
        )
    print(f"recorded {response.recorded} event")


def user_profile(connection: Connection, user_id: str) -> None:
    """Prints the profile as JSON (protobuf field names)."""
    from google.protobuf.json_format import MessageToDict

    with connection.channel() as channel:
        response = pb_grpc.RecommenderStub(channel).GetUserProfile(
            pb.GetUserProfileRequest(user_id=user_id),
            timeout=connection.timeout,
            metadata=connection.metadata,
        )
    print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))


def call(connection: Connection, method: str, request: object) -> object:
    """One call of `method` on the Recommender service."""
    with connection.channel() as channel:
        return getattr(pb_grpc.RecommenderStub(channel), method)(
            request, timeout=connection.timeout, metadata=connection.metadata
        )


def print_json(response: object) -> None:
    """A response as JSON (protobuf field names, defaults included)."""
    from google.protobuf.json_format import MessageToDict

    print(
        json.dumps(
            MessageToDict(
                response,  # type: ignore[arg-type]
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            indent=2,
        )
    )


def rank_items(
    connection: Connection, user_id: str, item_ids: list[str], context: list[str], as_json: bool
) -> None:
    response = call(
        connection,
        "RankItems",
        pb.RankItemsRequest(user_id=user_id, item_ids=item_ids, context_item_ids=context),
    )
    _print(response, as_json, f"{len(item_ids)} items ranked for user {user_id}")  # type: ignore[arg-type]


def bought_together(connection: Connection, item_ids: list[str], k: int, as_json: bool) -> None:
    response = call(
        connection,
        "FrequentlyBoughtTogether",
        pb.FrequentlyBoughtTogetherRequest(item_ids=item_ids, k=k),
    )
    _print(response, as_json, f"{k} items bought with {', '.join(item_ids) or 'an empty cart'}")  # type: ignore[arg-type]


def page(connection: Connection, user_id: str, context: list[str], as_json: bool) -> None:
    response: pb.RecommendPageResponse = call(  # type: ignore[assignment]
        connection,
        "RecommendPage",
        pb.RecommendPageRequest(user_id=user_id, context_item_ids=context),
    )
    if as_json:
        print_json(response)
        return
    print(
        f"page for user {user_id} (model {response.model_version}, "
        f"{response.lifecycle_stage} user), recommendation {response.recommendation_id}"
    )
    for row in response.rows:
        print(f"\n{row.title}  [{row.name}]")
        for rank, item in enumerate(row.items, 1):
            print(f"{rank:4d}  {item.item_id:<24} {item.score:10.4f}  {item.reason}")


def health(connection: Connection, service: str) -> bool:
    """True when the server reports SERVING for `service` ("" for the whole server)."""
    target, timeout = connection.target, connection.timeout
    with connection.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{target}: {name}")
    return response.status == health_pb2.HealthCheckResponse.SERVING
