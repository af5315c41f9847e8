"""A small command-line client over a real gRPC channel."""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


def _print(
    response: pb.RecommendResponse | pb.SimilarItemsResponse, as_json: bool, header: str
) -> None:
    rows = [
        {"item_id": i.item_id, "score": round(i.score, 6), "reason": i.reason}
        for i in response.items
    ]
    fallback = getattr(response, "fallback", False)
    if as_json:
        print(
            json.dumps(
                {"model_version": response.model_version, "fallback": fallback, "items": rows}
            )
        )
        return
    print(f"{header} (model {response.model_version}{', fallback' if fallback else ''})")
    for rank, row in enumerate(rows, 1):
        print(f"{rank:4d}  {row['item_id']:<24} {row['score']:10.4f}  {row['reason']}")


def recommend(
    target: str,
    user_id: str,
    k: int,
    exclude: list[str],
    exclude_purchased: bool,
    as_json: bool,
    timeout: float,
) -> None:
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(
                user_id=user_id, k=k, exclude_item_ids=exclude, exclude_purchased=exclude_purchased
            ),
            timeout=timeout,
        )
    _print(response, as_json, f"top {k} for user {user_id}")


def similar(target: str, item_id: str, k: int, as_json: bool, timeout: float) -> None:
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.RecommenderStub(channel).SimilarItems(
            pb.SimilarItemsRequest(item_id=item_id, k=k), timeout=timeout
        )
    _print(response, as_json, f"{k} items similar to {item_id}")


def health(target: str, service: str, timeout: float) -> bool:
    """True when the server reports SERVING for `service` ("" for the whole server)."""
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{target}: {name}")
    return response.status == health_pb2.HealthCheckResponse.SERVING
