"""The serving API end to end over real channels: every RPC, real-time events, privacy
deletion, API keys, TLS, metrics, hot reload under load, and arbitrary requests."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2
from helpers import RedisServer, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_e2e import RECSVC, RunningServer, start_server

from recsvc.campaigns import Campaign
from recsvc.events import StoredEvent, open_event_store
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.training.pipeline import TrainResult
from recsvc.training.sample_shop import campaign_response
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def model_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the trained store, so that publishing here disturbs no other test."""
    target = tmp_path_factory.mktemp("api") / "models"
    shutil.copytree(trained.model_dir, target)
    return target


@pytest.fixture(scope="module")
def api(model_dir: Path) -> Iterator[RunningServer]:
    running = start_server(model_dir, "--metrics-port", "0")
    running.wait_for_health(SERVING)
    yield running
    running.stop()


def metrics_url(server: RunningServer) -> str:
    for line in server.output:
        if "metrics on " in line:
            return line.split("metrics on ", 1)[1].strip()
    raise AssertionError("no metrics line in the server output")


def test_filters_and_context_over_the_wire(api: RunningServer) -> None:
    stub = api.stub
    top = stub.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=5)
    assert top.recommendation_id and len(top.items) == 5
    again = stub.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=5)
    assert again.items == top.items and again.model_version == top.model_version
    assert again.recommendation_id != top.recommendation_id  # each response its own id
    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=top.items[0].item_id, k=5))
    anchor = top.items[0].item_id
    session = stub.Recommend(
        pb.RecommendRequest(user_id="anon-42", k=5, context_item_ids=[anchor]), timeout=5
    )
    assert not session.fallback and session.strategy in ("session", "personal")
    assert {i.reason.split(":")[1] for i in session.items} == {anchor}
    assert len(similar.items) == 5
    hot = stub.PopularItems(pb.PopularItemsRequest(k=3, trending=True), timeout=5)
    assert {i.reason for i in hot.items} == {"trending"}


def similar(api: RunningServer, item: str) -> list[str]:
    request = pb.SimilarItemsRequest(item_id=item, k=20)
    return [i.item_id for i in api.stub.SimilarItems(request, timeout=5).items]


def _catalogue(model_dir: Path) -> PublishedModel:
    store = ModelStore(model_dir)
    return PublishedModel.load(store.path(store.current_version()))


@pytest.mark.parametrize("call", ["Recommend", "SimilarItems", "PopularItems"])
def test_every_filter_reaches_the_core_over_the_wire(
    api: RunningServer, model_dir: Path, call: str
) -> None:
    """Each filter field of the request changes the list as it says: a servicer that dropped
    one would serve the unfiltered list, which breaks every one of these bounds."""
    model = _catalogue(model_dir)
    anchor = "i0001"

    def ask(filters: pb.Filters | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
        filters = filters or pb.Filters()
        if call == "Recommend":
            request = pb.RecommendRequest(
                user_id="u0001", k=20, filters=filters, exclude_item_ids=exclude
            )
        elif call == "SimilarItems":
            request = pb.SimilarItemsRequest(
                item_id=anchor, k=20, filters=filters, exclude_item_ids=exclude
            )
        else:
            assert not exclude
            request = pb.PopularItemsRequest(k=20, filters=filters)
        return [i.item_id for i in getattr(api.stub, call)(request, timeout=5).items]

    def category(item: str) -> str:
        return str(model.items.categories[model.item_index(item)])

    def price(item: str) -> float:
        return float(model.items.price[model.item_index(item)])

    if call == "SimilarItems":  # an item whose likes span categories, so a filter bites
        anchor = next(
            str(item)
            for item in model.item_ids[:100]
            if len({category(i) for i in similar(api, str(item))}) > 1
        )
    plain = ask()
    assert len(plain) == 20
    categories = {category(i) for i in plain}
    assert len(categories) > 1  # so that a category filter has something to remove
    first = category(plain[0])
    inside = ask(pb.Filters(include_categories=[first]))
    assert inside and {category(i) for i in inside} == {first}
    outside = ask(pb.Filters(exclude_categories=[first]))
    assert len(outside) == 20 and first not in {category(i) for i in outside}
    middle = sorted(price(i) for i in plain)[10]
    cheap = ask(pb.Filters(max_price=middle))
    dear = ask(pb.Filters(min_price=middle))
    assert cheap and max(price(i) for i in cheap) <= middle
    assert dear and min(price(i) for i in dear) >= middle
    assert cheap != plain and dear != plain
    if call != "PopularItems":
        without = ask(exclude=(plain[0], plain[1]))
        assert without[:18] == plain[2:] and not {plain[0], plain[1]} & set(without)


def test_recorded_events_show_in_the_next_recommendation(api: RunningServer) -> None:
    stub = api.stub
    user = "fresh-visitor-7"
    before = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=5)
    assert before.fallback
    item = before.items[-1].item_id
    recorded = stub.RecordEvents(
        pb.RecordEventsRequest(
            events=[
                pb.Event(user_id=user, item_id=item, event="view"),
                pb.Event(user_id=user, item_id=item, event="cart", quantity=2, price=9.5),
            ]
        ),
        timeout=5,
    )
    after = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=5)
    assert recorded.recorded == 2
    assert not after.fallback and [i.item_id for i in after.items] != [
        i.item_id for i in before.items
    ]

    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordEvents(
            pb.RecordEventsRequest(
                events=[
                    pb.Event(user_id=user, item_id=item, event="view"),
                    pb.Event(user_id=user, item_id=item, event="click"),
                ]
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].event" in caught.value.details()


def test_forget_user_over_the_wire(api: RunningServer, model_dir: Path) -> None:
    stub = api.stub
    user = "u0007"
    stub.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id="i0001", event="view")])
    )
    assert not stub.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=5).fallback
    deleted = stub.ForgetUser(pb.ForgetUserRequest(user_id=user, reason="gdpr-1"), timeout=5)
    assert deleted.events_deleted == 1
    assert stub.Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=5).fallback
    audit = (model_dir / "test-events.db.audit.log").read_text()
    assert json.loads(audit.splitlines()[-1])["user_id"] == user


def test_model_info_reload_and_metrics(api: RunningServer) -> None:
    info = api.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.version and info.model_type and info.n_items > 0
    assert info.metrics["ndcg@10"] > 0
    again = api.stub.ReloadModel(pb.ReloadModelRequest(), timeout=5)
    assert again.version == info.version
    before = scrape(metrics_url(api))
    api.stub.Recommend(pb.RecommendRequest(user_id="nobody-at-all", k=3), timeout=5)
    api.stub.Recommend(pb.RecommendRequest(user_id="u0001", k=3), timeout=5)
    events = [pb.Event(user_id="u0001", item_id="i0001", event="view")] * 2
    api.stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=5)
    after = scrape(metrics_url(api))
    assert after["recsvc_fallbacks_total"] - before["recsvc_fallbacks_total"] == 1
    assert after["recsvc_events_recorded_total"] - before["recsvc_events_recorded_total"] == 2
    with pytest.raises(grpc.RpcError):
        api.stub.Recommend(pb.RecommendRequest(user_id="", k=3), timeout=5)
    body = urllib.request.urlopen(metrics_url(api), timeout=5).read().decode()
    assert 'recsvc_requests_total{code="OK",method="Recommend"}' in body
    assert 'recsvc_requests_total{code="INVALID_ARGUMENT",method="Recommend"}' in body
    assert "recsvc_request_seconds_bucket" in body
    assert "recsvc_fallbacks_total" in body and "recsvc_events_recorded_total" in body
    assert f'recsvc_model_info{{model_type="{info.model_type}",version="{info.version}"}} 1.0' in (
        body
    )


def test_access_log_lines_are_json_with_a_request_id(api: RunningServer) -> None:
    call = api.stub.Recommend.with_call(
        pb.RecommendRequest(user_id="u0001", k=1),
        metadata=(("x-request-id", "trace-abc-123"),),
        timeout=5,
    )
    assert ("x-request-id", "trace-abc-123") in call[1].trailing_metadata()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in api.output if x.startswith("{")]
        mine = [x for x in lines if x.get("request_id") == "trace-abc-123"]
        if mine:
            break
        time.sleep(0.05)
    assert mine and mine[0]["method"] == "Recommend" and mine[0]["code"] == "OK"
    assert "ms" in mine[0] and mine[0]["logger"] == "recsvc.access"


def test_reload_under_load_fails_no_request_and_refuses_a_broken_version(
    api: RunningServer, model_dir: Path
) -> None:
    store = ModelStore(model_dir)
    old = store.current_version()
    assert old is not None
    outcomes: Counter[str] = Counter()
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with grpc.insecure_channel(api.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            while not stop.is_set():
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id="u0003", k=20), timeout=5)
                    versions.add(r.model_version)
                    outcomes["OK"] += 1
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: outcomes["OK"] >= 4, "no call was answered before the publish")
    source = store.path(old)
    new = store.publish(
        lambda staging: shutil.copytree(source, staging, dirs_exist_ok=True), suffix="reload"
    )
    wait_until(lambda: new in versions, "the new version was never served")
    # A version whose arrays disagree is refused; the good one keeps serving.
    broken = store.publish(
        lambda staging: (
            shutil.copytree(source, staging, dirs_exist_ok=True),
            (staging / "item_ids.npy").write_bytes(b"not an array"),
        ),
        suffix="broken",
    )
    # Refused, not merely unseen: the watcher looked at it, failed to load it, and said so.
    wait_until(
        lambda: any(f"model {broken} failed to load or check" in line for line in api.output),
        "the broken version was never refused",
    )
    answered = outcomes["OK"]
    wait_until(lambda: outcomes["OK"] > answered + 20, "calls stopped after the refusal")
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert set(outcomes) == {"OK"}, outcomes
    assert outcomes["OK"] > 20
    assert new in versions and broken not in versions
    info = api.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.version == new
    store.set_current(old)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_and_api_keys(model_dir: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    (tmp_path / "keys").write_text(
        "# key role\nclient-key-1 client\nanalyst-key-1 analyst\nadmin-key-1 admin\n"
    )
    (tmp_path / "serve.toml").write_text('[serving]\napi_keys_file = "keys"\n')
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    running = start_server(
        model_dir,
        "--config",
        str(tmp_path / "serve.toml"),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        credentials=credentials,
    )
    try:
        running.wait_for_health(SERVING)  # health stays open for load balancers
        stub = running.stub
        request = pb.RecommendRequest(user_id="u0001", k=3)
        for metadata, code in [
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Recommend(request, metadata=metadata, timeout=5)
            assert caught.value.code() == code
        client = (("authorization", "Bearer client-key-1"),)
        admin = (("authorization", "Bearer admin-key-1"),)
        assert len(stub.Recommend(request, metadata=client, timeout=5).items) == 3
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReloadModel(pb.ReloadModelRequest(), metadata=client, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stub.ReloadModel(pb.ReloadModelRequest(), metadata=admin, timeout=5).version
        analyst = (("authorization", "Bearer analyst-key-1"),)
        # Customers' personal data is for analysts and admins, never a frontend's client key.
        profile = pb.GetUserProfileRequest(user_id="u0001")
        audience = pb.FindAudienceRequest(category="garden", k=5)
        for call, request in (
            ("GetUserProfile", profile),
            ("FindAudience", audience),
            ("ListSegments", pb.ListSegmentsRequest()),
            ("GetSegment", pb.GetSegmentRequest(segment_id="rfm:champions")),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, call)(request, metadata=client, timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, call
            for key in (analyst, admin):
                getattr(stub, call)(request, metadata=key, timeout=5)
        assert len(stub.FindAudience(audience, metadata=analyst, timeout=5).users) == 5
        for call, request in (
            ("ReloadModel", pb.ReloadModelRequest()),
            ("ForgetUser", pb.ForgetUserRequest(user_id="nobody-known")),
            ("ListCampaigns", pb.ListCampaignsRequest()),
            ("CreateCampaign", pb.CreateCampaignRequest(name="c", category="garden")),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, call)(request, metadata=analyst, timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, call
        with grpc.insecure_channel(running.target) as plain, pytest.raises(grpc.RpcError):
            pb_grpc.RecommenderStub(plain).Recommend(request, metadata=client, timeout=2)
        # The container's health check over TLS (the certificate names localhost).
        health = [RECSVC, "health", "--target", running.target, "--tls-ca", str(cert)]
        checked = subprocess.run([*health, "--tls-server-name", "localhost"], capture_output=True)
        assert checked.returncode == 0 and b"SERVING" in checked.stdout, checked.stderr
        assert subprocess.run([RECSVC, "health", "--target", running.target]).returncode == 1
        cli = [RECSVC, "recommend", "--target", running.target, "--user", "u0001", "--json"]
        tls = ["--tls-ca", str(cert)]
        denied = subprocess.run([*cli, *tls], capture_output=True, text=True)
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        allowed = subprocess.run(
            [*cli, *tls, "--context", "i0002"],
            capture_output=True,
            text=True,
            env={**os.environ, "RECSVC_API_KEY": "client-key-1"},
        )
        assert allowed.returncode == 0, allowed.stderr
        assert len(json.loads(allowed.stdout)["items"]) == 10
    finally:
        running.stop()


ids = st.text(max_size=300)
filters = st.builds(
    pb.Filters,
    include_categories=st.lists(st.text(max_size=20), max_size=3),
    exclude_categories=st.lists(st.text(max_size=20), max_size=3),
    available_only=st.booleans(),
    min_price=st.floats(allow_nan=True, allow_infinity=True),
    max_price=st.floats(allow_nan=True, allow_infinity=True),
)
k = st.integers(min_value=-(2**31), max_value=2**31 - 1)
calls = st.one_of(
    st.tuples(
        st.just("Recommend"),
        st.builds(
            pb.RecommendRequest,
            user_id=ids,
            k=k,
            exclude_item_ids=st.lists(ids, max_size=3),
            exclude_purchased=st.booleans(),
            filters=filters,
            context_item_ids=st.lists(st.sampled_from(["i0001", "i0002", "zz"]) | ids, max_size=3),
            user_attributes=st.dictionaries(
                st.sampled_from(["age_band", "gender", ""]) | ids, ids, max_size=3
            ),
        ),
    ),
    st.tuples(
        st.just("GetUserProfile"),
        st.builds(pb.GetUserProfileRequest, user_id=st.sampled_from(["u0001", "u0002"]) | ids),
    ),
    st.tuples(
        st.just("ListSegments"),
        st.builds(pb.ListSegmentsRequest, kind=st.sampled_from(["rfm", "cluster", ""]) | ids),
    ),
    st.tuples(
        st.just("GetSegment"),
        st.builds(
            pb.GetSegmentRequest, segment_id=st.sampled_from(["rfm:lost", "cluster:1"]) | ids
        ),
    ),
    st.tuples(
        st.just("FindAudience"),
        st.builds(
            pb.FindAudienceRequest,
            item_id=st.sampled_from(["i0001", ""]) | ids,
            category=st.sampled_from(["garden", ""]) | ids,
            segment_id=st.sampled_from(["rfm:lost", "cluster:x", ""]) | ids,
            k=k,
            exclude_buyers=st.booleans(),
            min_churn_risk=st.none() | st.floats(allow_nan=True),
        ),
    ),
    st.tuples(
        st.just("SimilarItems"),
        st.builds(pb.SimilarItemsRequest, item_id=st.sampled_from(["i0001"]) | ids, k=k),
    ),
    st.tuples(
        st.just("PopularItems"),
        st.builds(
            pb.PopularItemsRequest,
            k=k,
            categories=st.lists(st.text(max_size=10), max_size=3),
            trending=st.booleans(),
            filters=filters,
        ),
    ),
    st.tuples(
        st.just("RecordEvents"),
        st.builds(
            pb.RecordEventsRequest,
            events=st.lists(
                st.builds(
                    pb.Event,
                    user_id=st.text(min_size=1, max_size=40).map(lambda s: "hyp-" + s) | ids,
                    item_id=ids,
                    event=st.sampled_from(["view", "cart", "purchase", "", "buy"]),
                    timestamp_ms=st.integers(min_value=-(2**63), max_value=2**63 - 1),
                    quantity=st.floats(allow_nan=True),
                    price=st.floats(allow_nan=True),
                    recommendation_id=st.text(max_size=300),
                ),
                max_size=4,
            ),
        ),
    ),
    st.tuples(
        st.just("ForgetUser"),
        st.builds(pb.ForgetUserRequest, user_id=st.text(max_size=40).map(lambda s: "hyp-" + s)),
    ),
    st.tuples(st.just("GetModelInfo"), st.just(pb.GetModelInfoRequest())),
    st.tuples(
        st.just("RankItems"),
        st.builds(
            pb.RankItemsRequest,
            user_id=st.sampled_from(["u0001", "anon-hyp"]) | ids,
            item_ids=st.lists(st.sampled_from(["i0001", "i0002", "zz"]) | ids, max_size=6),
            filters=filters,
            exclude_purchased=st.booleans(),
            context_item_ids=st.lists(st.sampled_from(["i0001", "zz"]) | ids, max_size=3),
            user_attributes=st.dictionaries(
                st.sampled_from(["age_band", ""]) | ids, ids, max_size=2
            ),
        ),
    ),
    st.tuples(
        st.just("FrequentlyBoughtTogether"),
        st.builds(
            pb.FrequentlyBoughtTogetherRequest,
            item_ids=st.lists(st.sampled_from(["i0001", "i0002", "zz"]) | ids, max_size=4),
            k=k,
            filters=filters,
            exclude_item_ids=st.lists(ids, max_size=2),
            user_id=st.sampled_from(["u0001", ""]) | ids,
            exclude_purchased=st.booleans(),
        ),
    ),
    st.tuples(
        st.just("RecommendPage"),
        st.builds(
            pb.RecommendPageRequest,
            user_id=st.sampled_from(["u0001", "anon-hyp"]) | ids,
            filters=filters,
            exclude_item_ids=st.lists(ids, max_size=2),
            exclude_purchased=st.booleans(),
            context_item_ids=st.lists(st.sampled_from(["i0001", "zz"]) | ids, max_size=3),
        ),
    ),
    st.tuples(
        st.just("RecommendCategories"),
        st.builds(
            pb.RecommendCategoriesRequest,
            user_id=st.sampled_from(["u0001"]) | ids,
            k=k,
            kind=st.sampled_from(["category", "brand", ""]) | ids,
            context_item_ids=st.lists(st.sampled_from(["i0001", "zz"]) | ids, max_size=2),
        ),
    ),
    st.tuples(
        st.just("RecentlyViewed"),
        st.builds(pb.RecentlyViewedRequest, user_id=st.sampled_from(["u0001"]) | ids, k=k),
    ),
    st.tuples(
        st.just("MergeUsers"),
        st.builds(
            pb.MergeUsersRequest,
            anonymous_id=st.text(max_size=40).map(lambda s: "hyp-anon-" + s) | ids,
            user_id=st.text(max_size=40).map(lambda s: "hyp-user-" + s) | ids,
            reason=st.text(max_size=50),
        ),
    ),
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=calls)
def test_no_client_request_is_ever_an_internal_error(api: RunningServer, call) -> None:
    method, request = call
    try:
        getattr(api.stub, method)(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        }, (method, exc.code(), exc.details())


def test_recommend_on_the_wire_answers_each_call_whole_and_refuses_garbage(
    api: RunningServer,
) -> None:
    """Recommend is served from request bytes to response bytes: a repeated request (parsed
    once, its list serialised once) still gets every field and its own recommendation id, a
    request with new fields gets its own answer, and bytes that are no RecommendRequest are
    INVALID_ARGUMENT."""
    raw = api.channel.unary_unary("/recsvc.v1.Recommender/Recommend")
    request = pb.RecommendRequest(user_id="u0001", k=4)
    typed = api.stub.Recommend(request, timeout=5)
    answers = [pb.RecommendResponse.FromString(raw(request.SerializeToString())) for _ in range(3)]
    for answer in answers:
        assert answer.recommendation_id and answer.model_version == typed.model_version
        assert answer.strategy == typed.strategy and answer.lifecycle_stage
        assert list(answer.items) == list(typed.items) and len(answer.items) == 4
    ids = {a.recommendation_id for a in (typed, *answers)}
    assert len(ids) == 4
    narrower = pb.RecommendRequest(user_id="u0001", k=2, exclude_item_ids=[typed.items[0].item_id])
    answer = pb.RecommendResponse.FromString(raw(narrower.SerializeToString(), timeout=5))
    assert [i.item_id for i in answer.items] == [i.item_id for i in typed.items[1:3]]
    with pytest.raises(grpc.RpcError) as refused:
        raw(b"\xff\xff\xff", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RecommendRequest" in (refused.value.details() or "")


def test_marketing_calls_over_the_wire(api: RunningServer, model_dir: Path) -> None:
    # The profile over the wire is, field by field, the one the core computes from the same
    # model and the same event store (so on the same profile clock).
    store = open_event_store(f"sqlite:///{model_dir / 'test-events.db'}")
    core = RecommenderCore(event_store=store)
    core.swap(_catalogue(model_dir))
    for user in ("u0001", "u0002", "u0150"):
        wire = api.stub.GetUserProfile(pb.GetUserProfileRequest(user_id=user), timeout=10)
        core.sync()
        local = core.user_profile(user)
        assert wire.lifecycle_stage == local["lifecycle_stage"] != ""
        assert wire.rfm_segment_id == local["rfm_segment_id"] == f"rfm:{wire.rfm.segment}"
        assert (wire.rfm.r, wire.rfm.f, wire.rfm.m) == tuple(local["rfm"][x] for x in "rfm")
        assert wire.rfm.frequency == local["rfm"]["frequency"]
        if local["churn_risk"] is None:
            assert not wire.HasField("churn_risk")
        else:
            assert wire.churn_risk == pytest.approx(local["churn_risk"])
        assert wire.rfm.monetary == pytest.approx(local["rfm"]["monetary"])
        assert dict(wire.attributes) == local["attributes"] and wire.attributes["age_band"]
        assert [t.name for t in wire.top_categories] == [n for n, _ in local["top_categories"]]
        assert [t.name for t in wire.top_brands] == [n for n, _ in local["top_brands"]]
        assert wire.cluster_segment_id == local["cluster_segment_id"]
        assert (wire.price_band, list(wire.active_hours_utc)) == (
            local["price_band"],
            local["active_hours_utc"],
        )
        assert (wire.first_seen_ms, wire.last_seen_ms) == (
            local["first_seen_ms"],
            local["last_seen_ms"],
        )
    store.close()
    segments = api.stub.ListSegments(pb.ListSegmentsRequest(kind="cluster"), timeout=10)
    assert segments.segments and all(s.kind == "cluster" for s in segments.segments)
    one = api.stub.GetSegment(pb.GetSegmentRequest(segment_id=segments.segments[0].id), timeout=10)
    assert one.size == segments.segments[0].size and one.method.startswith("k-means")
    audience = api.stub.FindAudience(
        pb.FindAudienceRequest(category="garden", k=20, exclude_buyers=True), timeout=10
    )
    assert len(audience.users) == 20 and "garden" in audience.basis
    listed = api.stub.Recommend(
        pb.RecommendRequest(user_id="walk-in", k=5, user_attributes={"age_band": "55+"}),
        timeout=10,
    )
    assert listed.strategy == "hybrid" and listed.lifecycle_stage == "new"
    for call, request, code in (
        ("GetUserProfile", pb.GetUserProfileRequest(user_id="nobody"), "NOT_FOUND"),
        ("GetSegment", pb.GetSegmentRequest(segment_id="rfm:nobody"), "NOT_FOUND"),
        (
            "FindAudience",
            pb.FindAudienceRequest(item_id="i0001", category="garden", k=5),
            "INVALID_ARGUMENT",
        ),
        ("FindAudience", pb.FindAudienceRequest(k=5), "INVALID_ARGUMENT"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(api.stub, call)(request, timeout=10)
        assert caught.value.code().name == code, (call, caught.value.details())


def test_experiment_and_rules_from_config_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text(
        """
[serving.rules]
max_per_category = 1

[[serving.experiments]]
name = "home"
salt = "e2e"
[[serving.experiments.variants]]
name = "model"
weight = 1.0
[[serving.experiments.variants]]
name = "trending"
weight = 1.0
strategy = "trending"
"""
    )
    store = tmp_path / "events.db"
    running = start_server(
        model_dir, "--config", str(tmp_path / "serve.toml"), "--event-store", f"sqlite:///{store}"
    )
    try:
        running.wait_for_health(SERVING)
        stub = running.stub
        published = PublishedModel.load(
            ModelStore(model_dir).path(ModelStore(model_dir).current_version())
        )
        variants: Counter[str] = Counter()
        for n in range(1, 41):
            user = f"u{n:04d}"
            response = stub.Recommend(pb.RecommendRequest(user_id=user, k=8), timeout=5)
            variants[response.variant] += 1
            assert response.variant in ("home/model", "home/trending")
            assert response.fallback == (response.variant == "home/trending")
            per_category = Counter(
                str(published.items.categories[published.item_index(i.item_id)])
                for i in response.items
            )
            assert max(per_category.values()) == 1, per_category  # the cap holds everywhere
            stub.RecordEvents(
                pb.RecordEventsRequest(
                    events=[
                        pb.Event(
                            user_id=user,
                            item_id=response.items[0].item_id,
                            event="purchase" if n % 3 == 0 else "view",
                            recommendation_id=response.recommendation_id,
                        )
                    ]
                ),
                timeout=5,
            )
        assert set(variants) == {"home/model", "home/trending"}
    finally:
        running.stop()  # flushes buffered impressions
    report = subprocess.run(
        [RECSVC, "experiments", "report", "--event-store", f"sqlite:///{store}", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["variant"]: r for r in json.loads(report.stdout)}
    assert sum(r["impressions"] for r in rows.values()) == 40
    assert sum(r["clicks"]["successes"] for r in rows.values()) == 40 - 13
    assert sum(r["conversions"]["successes"] for r in rows.values()) == 13


def test_workers_share_the_port_and_real_time_state(model_dir: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    running = start_server(model_dir, "--workers", "2", "--event-store", store)
    try:
        running.wait_for_health(SERVING)
        user = "multi-worker-visitor"
        # Separate channels are separate connections: the kernel may give each to either worker.
        channels = [
            grpc.insecure_channel(running.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        stubs = [pb_grpc.RecommenderStub(c) for c in channels]
        assert stubs[0].Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5).fallback
        item = stubs[0].PopularItems(pb.PopularItemsRequest(k=50), timeout=5).items[-1].item_id
        stubs[1].RecordEvents(
            pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item, event="cart")]),
            timeout=5,
        )
        # Workers sync every 0.25 s; allow a loaded CI machine 3 s before calling it a failure.
        deadline = time.monotonic() + 3.0
        for stub in stubs:
            while stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5).fallback:
                assert time.monotonic() < deadline, "a worker never saw the recorded event"
                time.sleep(0.05)
        for channel in channels:
            channel.close()
        # Both workers answered: 16 connections all landing on one worker has odds of 2**-15.
        answered_by: set[int] = set()

        def two_workers_answered() -> bool:
            answered_by.update(
                line["pid"]
                for line in map(json.loads, filter(lambda x: x.startswith("{"), running.output))
                if line.get("method") == "Recommend"
            )
            return len(answered_by) == 2

        wait_until(two_workers_answered, "one worker answered every connection")
        # ... and they share one memory-mapped copy of the model's arrays, not a copy each.
        version = ModelStore(model_dir).path(ModelStore(model_dir).current_version())
        for pid in answered_by:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert str(version / "item_ids.npy") in maps, f"worker {pid} copied the model"
    finally:
        code, output = running.stop()
    assert code == 0, output
    assert "(2 workers)" in output and output.count("stopping: draining") == 2


def worker_pids(running: RunningServer) -> set[int]:
    """The server processes under a `--workers` parent (not multiprocessing's helpers)."""
    pid = running.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = set()
    for child in map(int, children):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(child)
        except FileNotFoundError:
            continue  # exited meanwhile
    return workers


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def test_a_killed_worker_is_replaced_while_calls_keep_succeeding(
    model_dir: Path, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    running = start_server(
        model_dir, "--workers", "2", "--metrics-port", "0", "--event-store", store
    )
    outcomes: list[tuple[float, grpc.StatusCode]] = []
    stop = threading.Event()

    def load() -> None:
        # Several connections, so that the kernel hands both workers some of them.
        channels = [
            grpc.insecure_channel(running.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(4)
        ]
        stubs = [pb_grpc.RecommenderStub(c) for c in channels]
        n = 0
        while not stop.is_set():
            n += 1
            request = pb.RecommendRequest(user_id=f"u{n % 500:04d}", k=5)
            try:
                # As a frontend should: a channel that has to reconnect (its worker killed)
                # waits to be ready instead of failing fast through gRPC's reconnect backoff,
                # where a tight loop would count hundreds of calls never sent to any worker.
                stubs[n % 4].Recommend(request, timeout=5, wait_for_ready=True)
                outcomes.append((time.monotonic(), grpc.StatusCode.OK))
            except grpc.RpcError as error:
                outcomes.append((time.monotonic(), error.code()))
        for channel in channels:
            channel.close()

    loader = threading.Thread(target=load)
    try:
        running.wait_for_health(SERVING)
        wait_until(lambda: len(worker_pids(running)) == 2, "two workers")
        before = worker_pids(running)
        loader.start()
        wait_until(lambda: len(outcomes) > 50, "calls under way")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: any("replaced by pid" in line for line in running.output),
            "the killed worker replaced",
            timeout=5,
        )
        wait_until(lambda: len(worker_pids(running) - before) == 1, "a new worker process")
        (replacement,) = worker_pids(running) - before

        def replacement_answers() -> bool:
            fresh = grpc.insecure_channel(
                running.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            request = pb.RecommendRequest(user_id="x", k=5)
            pb_grpc.RecommenderStub(fresh).Recommend(request, timeout=5)
            fresh.close()
            return any(
                json.loads(line).get("pid") == replacement
                for line in list(running.output)
                if line.startswith("{") and '"method"' in line
            )

        wait_until(replacement_answers, "the new worker answering calls")
        served_after = len(outcomes)
        wait_until(lambda: len(outcomes) > served_after + 50, "calls after the replacement")
        stop.set()
        loader.join(timeout=30)
        failed = [code for at, code in outcomes if code != grpc.StatusCode.OK]
        after = [code for _, code in outcomes[served_after:]]
        # Only calls in flight on the killed worker's connections may fail, as UNAVAILABLE.
        assert set(failed) <= {grpc.StatusCode.UNAVAILABLE}, Counter(failed)
        assert len(failed) <= 4, Counter(failed)
        assert set(after) == {grpc.StatusCode.OK}
        urls = [
            line.split("metrics on ", 1)[1].strip()
            for line in running.output
            if "metrics on " in line
        ]
        counts = scrape(urls[-1])  # the replacement's own endpoint
        assert counts["recsvc_worker_exits_total"] == 1
        assert counts["recsvc_worker_replacements_total"] == 1
        assert counts["recsvc_workers_configured"] == 2
        # The parent counts a worker ready when it next looks (every 0.2 s).
        wait_until(lambda: scrape(urls[-1])["recsvc_workers_ready"] == 2, "two workers ready")
    finally:
        stop.set()
        if loader.is_alive():
            loader.join(timeout=30)
        code, output = running.stop()
    assert "exited with signal SIGKILL" in output
    assert code == 0, output


def test_workers_that_keep_dying_make_the_server_give_up(model_dir: Path, tmp_path: Path) -> None:
    from recsvc.service.workers import MAX_EXITS

    store = f"sqlite:///{tmp_path / 'events.db'}"
    running = start_server(model_dir, "--workers", "2", "--event-store", store)
    try:
        running.wait_for_health(SERVING)
        killed: set[int] = set()
        seen = worker_pids(running)
        for _ in range(MAX_EXITS):
            wait_until(lambda: len(worker_pids(running) - killed) >= 1, "a worker to kill", 30)
            seen |= worker_pids(running)
            victim = min(worker_pids(running) - killed)
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        code = running.process.wait(timeout=30)
    finally:
        _, output = running.stop()
    assert code == 1, output
    assert f"workers exited {MAX_EXITS} times within 60 s; giving up" in output
    assert not {pid for pid in seen if running_process(pid)}, "workers left behind"


def running_process(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not collected it


def test_redis_going_away_costs_unavailable_answers_never_recommendations(
    model_dir: Path, tmp_path: Path
) -> None:
    """Redis stops under load and comes back: RecordEvents and ForgetUser answer UNAVAILABLE
    (never INTERNAL) while it is gone, Recommend never fails, each replica logs the outage in
    two lines, and once it is back every replica takes in what is recorded through the other."""
    redis = RedisServer(tmp_path / "redis", persistent=True)
    (tmp_path / "redis").mkdir()
    redis.start()
    store = f"{redis.url}?prefix=outage"
    first = start_server(model_dir, "--event-store", store)
    second = start_server(model_dir, "--event-store", store)
    recommend_codes: Counter[grpc.StatusCode] = Counter()
    stop = threading.Event()

    def recommend_all_along() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for running in (first, second):
                try:
                    running.stub.Recommend(pb.RecommendRequest(user_id=f"u{n % 300:04d}", k=5))
                    recommend_codes[grpc.StatusCode.OK] += 1
                except grpc.RpcError as error:
                    recommend_codes[error.code()] += 1

    def event(user: str, item: str = "i0001") -> pb.RecordEventsRequest:
        return pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item, event="cart")])

    loader = threading.Thread(target=recommend_all_along)
    try:
        first.wait_for_health(SERVING)
        second.wait_for_health(SERVING)
        loader.start()
        assert first.stub.RecordEvents(event("before"), timeout=5).recorded == 1
        redis.stop()
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as refused:
                first.stub.RecordEvents(event("during"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "event store" in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as refused:
            second.stub.ForgetUser(pb.ForgetUserRequest(user_id="before"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        redis.start()

        def recorded_again() -> bool:
            try:
                return first.stub.RecordEvents(event("after", "i0002"), timeout=5).recorded == 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                return False

        wait_until(recorded_again, "RecordEvents to succeed once Redis is back")

        def second_sees_it() -> bool:
            answer = second.stub.Recommend(pb.RecommendRequest(user_id="after", k=5), timeout=5)
            return not answer.fallback

        wait_until(second_sees_it, "the other replica to take in the event recorded after")
    finally:
        stop.set()
        if loader.is_alive():
            loader.join(timeout=30)
        outputs = [running.stop()[1] for running in (first, second)]
        redis.stop()
    assert set(recommend_codes) == {grpc.StatusCode.OK}, recommend_codes
    for output in outputs:
        assert output.count("event store unreachable") == 1, output
        assert output.count("event store reachable again") == 1, output
        assert "Traceback" not in output and "INTERNAL" not in output


def test_two_servers_on_one_redis_share_events_and_deletions(
    model_dir: Path, redis_url: str
) -> None:
    """Two replicas (separate processes, separate ports, as behind a load balancer) pointed at
    the same Redis: an event recorded through one changes the other's next list, and a user
    forgotten through one is forgotten by the other."""
    store = f"{redis_url}?prefix=replicas"
    first = start_server(model_dir, "--event-store", store)
    second = start_server(model_dir, "--event-store", store)
    try:
        first.wait_for_health(SERVING)
        second.wait_for_health(SERVING)
        user = "replica-visitor"
        assert second.stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5).fallback
        item = first.stub.PopularItems(pb.PopularItemsRequest(k=50), timeout=5).items[-1].item_id
        first.stub.RecordEvents(
            pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item, event="cart")]),
            timeout=5,
        )
        # Replicas are told of each change at once; 3 s allows for a loaded machine.
        deadline = time.monotonic() + 3.0
        while second.stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5).fallback:
            assert time.monotonic() < deadline, "the second replica never saw the event"
            time.sleep(0.05)
        known = "u0001"
        assert not first.stub.Recommend(pb.RecommendRequest(user_id=known, k=5), timeout=5).fallback
        second.stub.ForgetUser(pb.ForgetUserRequest(user_id=known, reason="test"), timeout=5)
        deadline = time.monotonic() + 3.0
        while not first.stub.Recommend(pb.RecommendRequest(user_id=known, k=5), timeout=5).fallback:
            assert time.monotonic() < deadline, "the first replica still personalises"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as caught:
            first.stub.GetUserProfile(pb.GetUserProfileRequest(user_id=known), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for running in (first, second):
            code, output = running.stop()
            assert code == 0, output


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_loadtest_reports_rate_latency_and_codes(
    api: RunningServer, model_dir: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "report.json"
    command = [
        RECSVC, "loadtest", "--target", api.target, "--model-dir", str(model_dir),
        "--duration", "30", "--requests", "300", "--channels", "2", "--json", str(out),
        "--mix", "Recommend=0.7,SimilarItems=0.2,RecordEvents=0.1",
    ]  # fmt: skip
    command += ["--concurrency", "8"] if mode == "closed" else ["--rate", "400"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == mode
    # The request cap, not the 30 s duration, ends the run.
    assert report["codes"] == {"OK": report["completed"]} and 290 <= report["completed"] <= 310
    if mode == "open":
        # Calls go out on the schedule, never faster: 300 calls at 400/s take at least 0.75 s
        # (a client that ignored the rate sends them as fast as the server answers).
        assert report["seconds"] >= 0.9 * report["completed"] / 400, report["seconds"]
        assert report["achieved_rate"] <= 400 * 1.1
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert "latency ms" in done.stderr


def test_loadtest_stops_at_once_when_nothing_answers(model_dir: Path, tmp_path: Path) -> None:
    """Against a port nobody listens on, the load test says so in one line and exits 1,
    instead of counting refusals for its whole duration."""
    from recsvc.service.workers import free_port

    target = f"127.0.0.1:{free_port('127.0.0.1')}"
    done = subprocess.run(
        [RECSVC, "loadtest", "--target", target, "--model-dir", str(model_dir),
         "--duration", "600", "--concurrency", "2", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"recsvc: unavailable: nothing answers at {target} (waited 5 s)"
    ]
    assert not (tmp_path / "r.json").exists()


def test_loadtest_counts_errors_by_code(api: RunningServer, model_dir: Path, tmp_path) -> None:
    """Calls that fail are counted by status code, and the exit code says some failed."""
    done = subprocess.run(
        [RECSVC, "loadtest", "--target", api.target, "--model-dir", str(model_dir),
         "--requests", "50", "--concurrency", "2", "--mix", "Recommend=1", "-k", "5000",
         "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    codes = json.loads((tmp_path / "r.json").read_text())["codes"]
    assert codes == {"INVALID_ARGUMENT": 50}


def test_similar_and_profile_commands(api: RunningServer, model_dir: Path) -> None:
    similar = subprocess.run(
        [RECSVC, "similar", "--target", api.target, "--item", "i0001", "-k", "5", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert similar.returncode == 0, similar.stderr
    listed = json.loads(similar.stdout)
    wire = api.stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0001", k=5), timeout=5)
    assert [i["item_id"] for i in listed["items"]] == [i.item_id for i in wire.items]
    assert {i["reason"] for i in listed["items"]} == {"similar_to:i0001"}
    plain = subprocess.run(
        [RECSVC, "similar", "--target", api.target, "--item", "i0001", "-k", "5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plain.returncode == 0 and all(i.item_id in plain.stdout for i in wire.items)
    missing = subprocess.run(
        [RECSVC, "similar", "--target", api.target, "--item", "no-such-item"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    profile = subprocess.run(
        [RECSVC, "profile", "--target", api.target, "u0002"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert profile.returncode == 0, profile.stderr
    shown = json.loads(profile.stdout)
    wire_profile = api.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u0002"), timeout=5)
    assert shown["user_id"] == "u0002"
    assert shown["lifecycle_stage"] == wire_profile.lifecycle_stage
    assert shown["rfm_segment_id"] == wire_profile.rfm_segment_id
    nobody = subprocess.run(
        [RECSVC, "profile", "--target", api.target, "nobody-at-all"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert nobody.returncode == 1 and "NOT_FOUND" in nobody.stderr


def test_noop_server_answers_a_fixed_list_of_the_asked_size() -> None:
    process = subprocess.Popen(
        [RECSVC, "noop-server", "--port", "0", "-k", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("recsvc noop-server: listening on "), line
        target = line.rsplit(" ", 1)[1].strip()
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            first = stub.Recommend(pb.RecommendRequest(user_id="anyone", k=3), timeout=10)
            again = stub.Recommend(pb.RecommendRequest(user_id="else", k=50), timeout=10)
            similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="x", k=3), timeout=10)
            recorded = stub.RecordEvents(
                pb.RecordEventsRequest(events=[pb.Event(user_id="a", item_id="b")] * 3),
                timeout=10,
            )
        assert len(first.items) == len(similar.items) == 7 and first.items == again.items
        assert first.model_version == "noop" and recorded.recorded == 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_oversized_messages_are_resource_exhausted(api: RunningServer) -> None:
    """A request past limits.max_message_bytes (4 MiB) is refused by the transport with
    RESOURCE_EXHAUSTED, and the server keeps answering."""
    huge = pb.RecordEventsRequest(
        events=[pb.Event(user_id="big", item_id="x" * 1000, event="view")] * 5000
    )
    assert huge.ByteSize() > 4 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.RecordEvents(huge, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert api.stub.Recommend(pb.RecommendRequest(user_id="u0001", k=3), timeout=5).items


def test_a_variant_pinned_to_a_version_is_served_by_that_version(
    trained: TrainResult, tmp_path: Path
) -> None:
    """Variant "old" names the version published before the current one: its users are
    answered by that version (loaded beside the current), the others by the current one."""
    model_dir = tmp_path / "models"
    shutil.copytree(trained.model_dir, model_dir)
    store = ModelStore(model_dir)
    old = store.current_version()
    new = store.publish(
        lambda staging: shutil.copytree(store.path(old), staging, dirs_exist_ok=True),
        suffix="newer",
    )
    (tmp_path / "serve.toml").write_text(
        f"""
[[serving.experiments]]
name = "pin"
salt = "p"
[[serving.experiments.variants]]
name = "current"
[[serving.experiments.variants]]
name = "old"
model_version = "{old}"
"""
    )
    running = start_server(model_dir, "--config", str(tmp_path / "serve.toml"))
    try:
        running.wait_for_health(SERVING)
        wait_until(
            lambda: any(f"loaded version {old} for an experiment variant" in x
                        for x in running.output),
            "the pinned version was never loaded",
        )  # fmt: skip
        served: dict[str, set[str]] = {"pin/current": set(), "pin/old": set()}
        for n in range(1, 41):
            response = running.stub.Recommend(
                pb.RecommendRequest(user_id=f"u{n:04d}", k=5), timeout=5
            )
            served[response.variant].add(response.model_version)
        assert served == {"pin/current": {new}, "pin/old": {old}}
    finally:
        running.stop()


def experiment_server(
    model_dir: Path, tmp_path: Path, name: str, strategy: str
) -> tuple[RunningServer, str]:
    """A server running experiment `name` (variant a: the model; b: `strategy`) on its own
    SQLite store; the server and the store's URL."""
    (tmp_path / "serve.toml").write_text(
        f'[[serving.experiments]]\nname = "{name}"\nsalt = "{name}"\n'
        '[[serving.experiments.variants]]\nname = "a"\n'
        f'[[serving.experiments.variants]]\nname = "b"\nstrategy = "{strategy}"\n'
    )
    url = f"sqlite:///{tmp_path / 'events.db'}"
    config = str(tmp_path / "serve.toml")
    return start_server(model_dir, "--config", config, "--event-store", url), url


def test_load_test_traffic_stays_out_of_experiments_and_stored_events(
    model_dir: Path, tmp_path: Path
) -> None:
    """`recsvc loadtest` marks its calls: no impression is counted and no event stored, so
    neither an experiment's report nor the next training run sees them; --live counts them."""
    running, url = experiment_server(model_dir, tmp_path, "home", "trending")
    command = [
        RECSVC, "loadtest", "--target", running.target, "--model-dir", str(model_dir),
        "--duration", "30", "--requests", "200", "--concurrency", "4",
        "--mix", "Recommend=0.6,RecordEvents=0.4",
    ]  # fmt: skip
    try:
        running.wait_for_health(SERVING)
        marked = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert marked.returncode == 0, marked.stderr
        live = subprocess.run([*command, "--live"], capture_output=True, text=True, timeout=60)
        assert live.returncode == 0, live.stderr
    finally:
        running.stop()  # flushes buffered impressions
    store = open_event_store(url)
    impressions, events = store.read_impressions().num_rows, store.read_events().num_rows
    store.close()
    # Only the --live run's: about 120 lists and 80 single-event calls of its 200.
    assert 90 <= impressions <= 150, impressions
    assert 50 <= events <= 110, events


def test_serve_refuses_a_missing_model_dir_or_pinned_version(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "serve.toml").write_text(
        '[[serving.experiments]]\nname = "pin"\nsalt = "p"\n'
        '[[serving.experiments.variants]]\nname = "current"\n'
        '[[serving.experiments.variants]]\nname = "old"\nmodel_version = "20200101T000000Z-gone"\n'
    )
    serve = [RECSVC, "serve", "--port", "0"]
    pinned = subprocess.run(
        [*serve, "--model-dir", str(model_dir), "--config", str(tmp_path / "serve.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pinned.returncode == 2
    assert pinned.stderr.strip().splitlines() == [
        f"recsvc: error: experiment 'pin', variant 'old': model_version "
        f"'20200101T000000Z-gone' is not published in {model_dir} "
        f"(published: {', '.join(ModelStore(model_dir).versions())})"
    ]
    typo = subprocess.run(
        [*serve, "--model-dir", str(tmp_path / "modles")], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert typo.returncode == 2 and "modles does not exist" in typo.stderr
    assert not (tmp_path / "modles").exists()


def test_an_experiment_run_from_the_command_line(model_dir: Path, tmp_path: Path) -> None:
    """recommend --json gives the variant and recommendation id, record-event sends the
    purchase that follows it, and the report counts it against that variant."""
    running, url = experiment_server(model_dir, tmp_path, "cli", "popular")
    try:
        running.wait_for_health(SERVING)
        at = ["--target", running.target]
        shown = subprocess.run([RECSVC, "recommend", *at, "--user", "u0005", "-k", "3", "--json"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        listed = json.loads(shown.stdout)
        assert listed["variant"].startswith("cli/") and listed["recommendation_id"]
        bought = subprocess.run(
            [RECSVC, "record-event", *at, "--user", "u0005", "--item",
             listed["items"][0]["item_id"], "--event", "purchase",
             "--recommendation-id", listed["recommendation_id"], "--price", "12.5"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert bought.returncode == 0 and "recorded 1 event" in bought.stdout, bought.stderr
        plain = subprocess.run([RECSVC, "recommend", *at, "--user", "someone-new", "-k", "3"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert "fallback" in plain.stdout and "recommendation " in plain.stdout
    finally:
        running.stop()
    report = subprocess.run(
        [RECSVC, "experiments", "report", "--event-store", url, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["variant"]: r for r in json.loads(report.stdout)}
    assert rows[listed["variant"]]["conversions"]["successes"] == 1
    assert sum(r["impressions"] for r in rows.values()) == 2


def test_batch_lists_are_exactly_the_lists_recommend_serves(
    model_dir: Path, tmp_path: Path
) -> None:
    """With every rule on and lifecycle strategies at work, `batch-recommend --config` writes,
    for every user, the list a server with the same config serves (no experiment)."""
    (tmp_path / "rules.toml").write_text(
        "[serving.rules]\nmax_per_category = 2\nnew_item_days = 30.0\nboost_new = 0.5\n"
        'promoted_tag = "gift"\nboost_promoted = 1.0\n'
        '[serving.lifecycle]\nat_risk = "repurchase"\nchurned = "trending"\n'
    )
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_event_store(url)  # the servers' store, with a purchase made since training
    after = int(_catalogue(model_dir).manifest["data_end_ms"]) + 60_000
    store.append([StoredEvent("u0003", "i0002", "purchase", after)])
    store.close()
    out = tmp_path / "lists.parquet"
    batch = subprocess.run(
        [RECSVC, "batch-recommend", "--model-dir", str(model_dir), "--out", str(out), "-k", "8",
         "--exclude-purchased", "--config", str(tmp_path / "rules.toml"), "--event-store", url],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    written = {r["user_id"]: r["item_ids"] for r in pq.read_table(out).to_pylist()}
    assert len(written) == _catalogue(model_dir).user_ids.size
    running = start_server(model_dir, "--config", str(tmp_path / "rules.toml"),
                           "--event-store", url)  # fmt: skip
    strategies: Counter[str] = Counter()
    try:
        running.wait_for_health(SERVING)
        for user, items in written.items():
            served = running.stub.Recommend(
                pb.RecommendRequest(user_id=user, k=8, exclude_purchased=True), timeout=5
            )
            strategies[served.strategy] += 1
            assert [i.item_id for i in served.items] == items, user
    finally:
        running.stop()
    assert {"personal", "repurchase"} <= set(strategies), strategies


def test_campaigns_over_the_wire(api: RunningServer, model_dir: Path) -> None:
    """CreateCampaign plans with the reach rules and stores; GetCampaign's result recovers a
    planted uplift and is, number for number, `recsvc campaign report`'s; bad definitions are
    INVALID_ARGUMENT and a taken name ALREADY_EXISTS, with nothing stored."""
    stub, store_url = api.stub, f"sqlite:///{model_dir / 'test-events.db'}"
    request = pb.CreateCampaignRequest(
        name="wire-garden", category="garden", size=600, control_share=0.5,
        offer_category="garden", channel="email", salt="s1",
    )  # fmt: skip
    created = stub.CreateCampaign(request, timeout=60)
    assert created.members == 600 and created.treatment + created.control == 600
    assert created.reach["without_opt_in"] > 0 and created.channel == "email"
    assert created.basis and created.model_version
    for bad, code in (
        (request, grpc.StatusCode.ALREADY_EXISTS),
        (pb.CreateCampaignRequest(name="x", category="garden", control_share=0.95,
                                  offer_category="garden"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CreateCampaignRequest(name="x", category="garden", stages=["sleeping"],
                                  conversion="any"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CreateCampaignRequest(name="x", category="garden", channel="pigeon",
                                  conversion="any"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CreateCampaignRequest(name="x", category="garden"), grpc.StatusCode.INVALID_ARGUMENT),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateCampaign(bad, timeout=60)
        assert caught.value.code() == code, caught.value.details()
    listed = stub.ListCampaigns(pb.ListCampaignsRequest(), timeout=10).campaigns
    assert [c.name for c in listed] == ["wire-garden"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCampaign(pb.GetCampaignRequest(name="no-such"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    store = open_event_store(store_url)
    campaign = Campaign.from_json(store.campaigns()["wire-garden"])
    model = _catalogue(model_dir)
    catalogue = (model.item_ids, model.items.categories, model.items.price)
    store.append(campaign_response(campaign, catalogue, seed=5, base_rate=0.1, uplift=0.2))
    store.close()
    result = stub.GetCampaign(pb.GetCampaignRequest(name="wire-garden"), timeout=30)
    lift = result.conversion_uplift
    assert lift.low < 0.2 < lift.high and lift.p_value < 0.01
    assert result.treatment.members == created.treatment
    assert result.revenue_per_member_uplift.value > 0
    offline = subprocess.run(
        [RECSVC, "campaign", "report", "--model-dir", str(model_dir), "--name", "wire-garden",
         "--event-store", store_url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(offline.stdout)
    assert report["conversion_uplift"] == {
        "value": pytest.approx(lift.value), "ci": [pytest.approx(lift.low),
        pytest.approx(lift.high)], "p_value": pytest.approx(lift.p_value),
    }  # fmt: skip
    assert report["arms"]["control"]["converters"] == result.control.converters
