"""`recsvc`: one command, a subcommand per role.

Exit codes: 0 success; 2 bad input (unreadable file, missing column, bad config or flags);
3 refused by the quality gate (nothing published); 1 anything else. gRPC client errors exit 1
with the status code and message.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from recsvc.errors import (
    BadInput,
    InvalidArgument,
    NotFound,
    PublishFailed,
    QualityGateRefused,
    Unavailable,
)

if TYPE_CHECKING:
    from recsvc.config import ServingConfig
    from recsvc.console.server import ConsoleServer

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_GATE_REFUSED = 0, 1, 2, 3


def _data_generate(args: argparse.Namespace) -> None:
    from recsvc.training.sample_shop import ShopSpec, generate_shop

    spec = ShopSpec(n_users=args.users, n_items=args.items, weeks=args.weeks)
    shop = generate_shop(args.seed, spec)
    shop.write(args.out)
    print(
        f"wrote {shop.events.num_rows:,} events, {shop.items.num_rows:,} items and "
        f"{shop.users.num_rows:,} users to {args.out}"
    )


def _data_validate(args: argparse.Namespace) -> int:
    from recsvc.config import load_config
    from recsvc.training.ingest import load_job_inputs

    config = load_config(args.config)
    dataset = load_job_inputs(
        Path(args.events), args.items, args.users, config, rejects_dir=args.rejects_dir
    )
    for report in dataset.reports:
        print(report.summary())
    return EXIT_OK if all(r.rejected_total == 0 for r in dataset.reports) else EXIT_BAD_INPUT


def _data_import(args: argparse.Namespace) -> None:
    from recsvc.training.importers import import_dataset

    print(import_dataset(args.format, args.source, args.out).summary())


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    from recsvc.config import load_config
    from recsvc.training.engines import engine_for
    from recsvc.training.pipeline import TrainInputs, train

    config = load_config(args.config)
    if args.engine or args.spark_master:
        training = dataclasses.replace(
            config.training,
            engine=args.engine or config.training.engine,
            spark_master=args.spark_master or config.training.spark_master,
        )
        config = dataclasses.replace(config, training=training)

    def pick(flag: Path | None, configured: str) -> Path | None:
        return flag if flag is not None else (Path(configured) if configured else None)

    given = args.events or config.inputs.events
    events = engine_for(config).events_location(given) if given else None
    model_dir = pick(args.model_dir, config.inputs.model_dir)
    event_store = args.event_store or config.inputs.event_store or None
    if (events is None and event_store is None) or model_dir is None:
        raise BadInput(
            "train needs --events (or --event-store) and --model-dir (or [inputs] in --config)"
        )
    inputs = TrainInputs(
        events,
        pick(args.items, config.inputs.items),
        pick(args.users, config.inputs.users),
        event_store,
    )
    train(inputs, model_dir, config, rejects_dir=args.rejects_dir)


def _evaluate(args: argparse.Namespace) -> None:
    from recsvc.config import load_config
    from recsvc.training.pipeline import TrainInputs
    from recsvc.training.report import evaluate_models

    config = load_config(args.config)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    evaluate_models(
        TrainInputs(Path(args.events), args.items, args.users), config, args.out, models
    )


def _tune(args: argparse.Namespace) -> None:
    from recsvc.config import load_config
    from recsvc.training.pipeline import TrainInputs
    from recsvc.training.tune import tune

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    tune(
        TrainInputs(Path(args.events), args.items, args.users),
        load_config(args.config),
        args.out,
        models,
        args.budget,
        args.trials,
    )


def _loadtest(args: argparse.Namespace) -> int:
    import os

    from recsvc.loadtest.runner import (
        MIXABLE,
        LoadSpec,
        Workload,
        format_report,
        run_load,
        save_report,
    )

    mix = {}
    for part in args.mix.split(","):
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight)
        except ValueError as exc:
            raise BadInput(f"--mix: expected RPC=weight, got {part!r}") from exc
        if name.strip() not in MIXABLE:
            raise BadInput(f"--mix: unknown RPC {name.strip()!r}; one of {', '.join(MIXABLE)}")
    spec = LoadSpec(
        target=args.target,
        duration_s=args.duration,
        max_requests=args.requests,
        concurrency=args.concurrency,
        rate=args.rate,
        channels=args.channels,
        processes=args.processes,
        mix=mix,
        k=args.k,
        zipf=args.zipf,
        unknown_share=args.unknown_share,
        timeout_s=args.timeout,
        api_key=args.api_key or os.environ.get("RECSVC_API_KEY", ""),
        tls_ca=str(args.tls_ca or ""),
        seed=args.seed,
        live=args.live,
    )
    report = run_load(spec, Workload.from_model_dir(args.model_dir))
    print(format_report(report), file=sys.stderr)
    save_report(report, args.json)
    return EXIT_OK if set(report["codes"]) <= {"OK"} else EXIT_FAILED


def _batch_recommend(args: argparse.Namespace) -> None:
    from recsvc.config import load_config
    from recsvc.training.batch import batch_recommend

    batch_recommend(
        args.model_dir, args.out, args.k, args.limit, args.batch, args.exclude_purchased,
        event_store=args.event_store, config=load_config(args.config).serving,
    )  # fmt: skip


def _audience_export(args: argparse.Namespace) -> None:
    from recsvc.config import load_config
    from recsvc.training.marketing import export_audience

    export_audience(
        args.model_dir,
        args.out,
        item_id=args.item or "",
        category=args.category or "",
        segment_id=args.segment or "",
        k=args.k,
        exclude_buyers=args.exclude_buyers,
        config=load_config(args.config).serving,
        event_store=args.event_store or "",
    )


def _campaign_create(args: argparse.Namespace) -> None:
    from recsvc.campaigns import CampaignSpec
    from recsvc.config import load_config
    from recsvc.training.campaigns import create_campaign

    attributes = []
    for pair in args.attribute:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadInput(f"--attribute: expected NAME=VALUE, got {pair!r}")
        attributes.append((name, value))
    spec = CampaignSpec(
        args.name, item_id=args.item, category=args.category, segment_id=args.segment,
        min_churn_risk=args.min_churn_risk, stages=tuple(args.stage),
        attributes=tuple(attributes), size=args.size, control_share=args.control_share,
        offer_items=tuple(args.offer_item), offer_category=args.offer_category,
        offer_recommendations=args.offer_recommendations, conversion=args.conversion,
        window_days=args.window_days, channel=args.channel, salt=args.salt,
    )  # fmt: skip
    campaign = create_campaign(
        args.model_dir, spec, args.event_store, load_config(args.config).serving
    )
    left_out = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in campaign.reach.items()
                         if why != "matched" and n)  # fmt: skip
    print(
        f"campaign {campaign.name}: {campaign.reach.get('matched', 0):,} matched"
        f"{f' ({left_out} left out)' if left_out else ''}; {len(campaign.members):,} members, "
        f"{len(campaign.treatment):,} to reach, "
        f"{len(campaign.members) - len(campaign.treatment):,} held out as control"
    )


def _campaign_command(args: argparse.Namespace) -> None:
    import json

    from recsvc.training import campaigns

    if args.campaign_command == "list":
        for row in campaigns.list_campaigns(args.model_dir, args.event_store):
            print(json.dumps(row))
    elif args.campaign_command == "show":
        found = campaigns.load_campaign(args.model_dir, args.name, args.event_store)
        print(json.dumps(campaigns.describe(found), indent=2))
    elif args.campaign_command == "simulate":
        n = campaigns.simulate_response(
            args.model_dir, args.name, base_rate=args.base_rate, uplift=args.uplift,
            seed=args.seed, event_store=args.event_store,
        )  # fmt: skip
        print(f"recorded {n:,} simulated purchases answering campaign {args.name}")
    elif args.campaign_command == "export":
        n = campaigns.export_treatment(args.model_dir, args.name, args.out, args.event_store)
        print(f"wrote {n:,} treatment members to {args.out}")
    else:
        result = campaigns.campaign_report(args.model_dir, args.name, args.out, args.event_store)
        print(json.dumps(result, indent=2))


def _segments_report(args: argparse.Namespace) -> None:
    from recsvc.training.marketing import segments_report

    print(segments_report(args.model_dir, args.out))


def _profile(args: argparse.Namespace) -> None:
    from recsvc.service.client import user_profile

    user_profile(_connection(args), args.user_id)


def _noop_server(args: argparse.Namespace) -> None:
    from recsvc.loadtest.noop import serve_noop

    items = [f"item-{n:07d}" for n in range(args.k)]
    asyncio.run(serve_noop(args.host, args.port, args.k, items))


def _experiments_report(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    from recsvc.events import open_event_store
    from recsvc.experiments import experiment_report, format_report

    store = open_event_store(args.event_store, existing=True)
    try:
        impressions, outcomes = store.read_impressions(), store.read_outcomes()
    finally:
        store.close()
    prices: dict[str, float] = {}
    if args.model_dir is not None:
        from recsvc.modelstore import ModelStore
        from recsvc.published import PublishedModel
        from recsvc.serving.campaigns import catalogue_facts

        models = ModelStore(args.model_dir)
        models.check_exists()
        _, prices = catalogue_facts(PublishedModel.load(models.current_path()), outcomes)
    results = experiment_report(impressions, outcomes, prices)
    if args.experiment:
        results = [r for r in results if r.variant.split("/", 1)[0] == args.experiment]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    elif results:
        print(format_report(results))
    else:
        print("no impressions recorded yet")


def _models_list(args: argparse.Namespace) -> None:
    import json

    from recsvc.modelstore import ModelStore
    from recsvc.published import MANIFEST_FILE

    store = ModelStore(args.model_dir)
    store.check_exists()
    current = store.current_version()
    if current is None:
        print(f"no model published in {args.model_dir}", file=sys.stderr)
    for version in store.versions():
        try:
            manifest = json.loads((store.path(version) / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            manifest = {}
        variant = manifest.get("evaluation", {}).get("variant", "all")
        score = manifest.get("metrics", {}).get(variant, {}).get("ndcg@10")
        print(
            f"{'*' if version == current else ' '} {version}  "
            f"{manifest.get('model_type', '?'):<10} {manifest.get('created_at', '?')}  "
            f"ndcg@10 {score if score is not None else '-'}"
        )
        stages = manifest.get("serving", {}).get("lifecycle", {})
        if stages:
            print("    served per stage: " + ", ".join(f"{s} {v}" for s, v in stages.items()))


def _models_rollback(args: argparse.Namespace) -> None:
    from recsvc.modelstore import ModelStore

    store = ModelStore(args.model_dir)
    if args.version not in store.versions():
        raise BadInput(f"no version {args.version!r} in {args.model_dir}; see recsvc models list")
    store.set_current(args.version)
    print(f"current is now {args.version}")


def _serve(args: argparse.Namespace) -> int:
    from recsvc.config import load_config
    from recsvc.service.observability import JsonFormatter
    from recsvc.service.server import ServeOptions, check_model_dir, serve

    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("recsvc.access").setLevel(
        logging.INFO if args.access_log else logging.WARNING
    )
    options = ServeOptions(
        host=args.host,
        port=args.port,
        reload_interval=args.reload_interval,
        grace=args.grace,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        event_store=args.event_store or "",
        log_format=args.log_format,
        access_log=args.access_log,
    )
    config = load_config(args.config).serving
    print(f"recsvc serve: {check_model_dir(args.model_dir, config)}", flush=True)
    console = None
    if args.console_port is not None:  # beside the gRPC server, on threads of this process
        # The server's own metrics, when on a fixed port (0 is picked later, inside the server).
        metrics = f"http://{args.host}:{args.metrics_port}/metrics" if args.metrics_port else ""
        console = _console_server(args, config, args.console_port, metrics)
        console.start()
        print(f"recsvc serve: console on {console.address}", flush=True)
    try:
        if args.workers > 1:
            from recsvc.service.workers import serve_workers

            return serve_workers(args.model_dir, config, options, args.workers)
        asyncio.run(serve(args.model_dir, config, options))
        return EXIT_OK
    finally:
        if console is not None:  # its worker threads would keep the process alive
            console.stop()


def _console_server(
    args: argparse.Namespace, config: ServingConfig, port: int, metrics_url: str
) -> ConsoleServer:
    from recsvc.console.server import ConsoleOptions, ConsoleServer

    options = ConsoleOptions(
        host=args.host,
        port=port,
        event_store=args.event_store or "",
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_url=metrics_url,
    )
    return ConsoleServer.build(args.model_dir, config, options)


def _console(args: argparse.Namespace) -> int:
    import contextlib
    import signal
    import threading

    from recsvc.config import load_config

    logging.getLogger("recsvc.console").setLevel(logging.INFO)
    server = _console_server(args, load_config(args.config).serving, args.port, args.metrics_url)
    print(f"recsvc console: {server.address}", flush=True)
    if server.address.startswith("http://127.") or "localhost" in server.address:
        print("recsvc console: open it in a browser (ctrl-C stops it)", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    with contextlib.suppress(KeyboardInterrupt):  # ctrl-C: stop as for SIGTERM
        stopping.wait()
    server.stop()  # lets requests in flight finish
    return EXIT_OK


def _connection(args: argparse.Namespace):
    import os

    from recsvc.service.client import Connection

    key = args.api_key or os.environ.get("RECSVC_API_KEY", "")
    return Connection(args.target, key, args.tls_ca, args.timeout, args.tls_server_name)


def _recommend(args: argparse.Namespace) -> None:
    from recsvc.service.client import recommend

    recommend(
        _connection(args),
        args.user,
        args.k,
        args.exclude,
        args.exclude_purchased,
        args.context,
        args.json,
    )


def _similar(args: argparse.Namespace) -> None:
    from recsvc.service.client import similar

    similar(_connection(args), args.item, args.k, args.json)


def _rank(args: argparse.Namespace) -> None:
    from recsvc.service.client import rank_items

    rank_items(_connection(args), args.user, args.items, args.context, args.json)


def _together(args: argparse.Namespace) -> None:
    from recsvc.service.client import bought_together

    bought_together(_connection(args), args.items, args.k, args.json)


def _page(args: argparse.Namespace) -> None:
    from recsvc.service.client import page

    page(_connection(args), args.user, args.context, args.json)


def _categories(args: argparse.Namespace) -> None:
    from recsvc.service.client import call, print_json
    from recsvc.v1 import recommender_pb2 as pb

    request = pb.RecommendCategoriesRequest(user_id=args.user, k=args.k, kind=args.kind)
    print_json(call(_connection(args), "RecommendCategories", request))


def _recently_viewed(args: argparse.Namespace) -> None:
    from recsvc.service.client import call, print_json
    from recsvc.v1 import recommender_pb2 as pb

    request = pb.RecentlyViewedRequest(user_id=args.user, k=args.k)
    print_json(call(_connection(args), "RecentlyViewed", request))


def _merge_users(args: argparse.Namespace) -> None:
    from recsvc.service.client import call
    from recsvc.v1 import recommender_pb2 as pb

    request = pb.MergeUsersRequest(anonymous_id=args.anonymous, user_id=args.user,
                                   reason=args.reason)  # fmt: skip
    moved = call(_connection(args), "MergeUsers", request).events_moved  # type: ignore[attr-defined]
    print(f"moved {moved} events from {args.anonymous} to {args.user}")


def _record_event(args: argparse.Namespace) -> None:
    from recsvc.service.client import record_event
    from recsvc.v1 import recommender_pb2 as pb

    event = pb.Event(
        user_id=args.user,
        item_id=args.item,
        event=args.event,
        timestamp_ms=args.timestamp_ms,
        quantity=args.quantity,
        recommendation_id=args.recommendation_id,
    )
    if args.price is not None:
        event.price = args.price
    record_event(_connection(args), event)


def _health(args: argparse.Namespace) -> int:
    from recsvc.service.client import health

    return EXIT_OK if health(_connection(args), args.service) else EXIT_FAILED


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535; 0 picks a free one)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsvc", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    roles = parser.add_subparsers(dest="role", required=True)

    data = roles.add_parser("data", help="sample data and input validation")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    gen = data_cmds.add_parser("generate", help="write the synthetic sample shop")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True, help="directory for the three CSV files")
    gen.add_argument("--users", type=int, default=2_000)
    gen.add_argument("--items", type=int, default=1_000)
    gen.add_argument("--weeks", type=int, default=8)
    gen.set_defaults(run=_data_generate)
    val = data_cmds.add_parser("validate", help="check input files; exit 2 if any row is rejected")
    _add_input_flags(val)
    val.add_argument("--rejects-dir", type=Path, default=Path("rejects"))
    val.set_defaults(run=_data_validate)
    imp = data_cmds.add_parser(
        "import", help="convert a public dataset (see ../shared/data) into the data contract"
    )
    imp.add_argument(
        "--format",
        required=True,
        choices=["online-retail", "movielens", "taobao", "tmall", "multibehavior"],
    )
    imp.add_argument("source", type=Path, help="the dataset's file or folder")
    imp.add_argument("out", type=Path, help="directory for events.csv (+ items.csv, users.csv)")
    imp.set_defaults(run=_data_import)

    train = roles.add_parser("train", help="train on event logs and publish a model version")
    _add_input_flags(train, events_required=False)
    train.add_argument("--model-dir", type=Path, default=None)
    train.add_argument(
        "--event-store",
        default=None,
        help="URL of the server's event store (sqlite:///path/events.db): its events are "
        "added to the inputs and forgotten users are left out",
    )
    train.add_argument(
        "--rejects-dir",
        type=Path,
        default=None,
        help="where rejected rows go (default MODEL_DIR/rejects)",
    )
    train.add_argument(
        "--engine",
        choices=["local", "spark"],
        default=None,
        help="spark: Spark reads the Parquet events and fits ALS (default: training.engine)",
    )
    train.add_argument(
        "--spark-master", default=None, help="e.g. local[4], yarn (default: training.spark_master)"
    )
    train.set_defaults(run=_train)

    evaluate = roles.add_parser("evaluate", help="compare models on one holdout; write reports")
    _add_input_flags(evaluate)
    evaluate.add_argument("--out", type=Path, required=True, help="directory for the reports")
    evaluate.add_argument(
        "--models",
        default=None,
        help="comma-separated types (default: model.candidates of the config)",
    )
    evaluate.set_defaults(run=_evaluate)

    tuning = roles.add_parser(
        "tune", help="search hyper-parameters (Optuna) and write the best configuration"
    )
    _add_input_flags(tuning)
    tuning.add_argument("--out", type=Path, required=True, help="TOML file to write")
    tuning.add_argument("--budget", type=float, default=600.0, help="seconds to search")
    tuning.add_argument(
        "--trials", type=int, default=None, help="stop after this many trials (repeatable runs)"
    )
    tuning.add_argument(
        "--models", default=None, help="comma-separated types (default: all tunable)"
    )
    tuning.set_defaults(run=_tune)

    serve = roles.add_parser("serve", help="serve the current model over gRPC")
    serve.add_argument("--model-dir", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=50051, help="0 picks a free port")
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=5.0,
        help="seconds between checks for a newly published version",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to let requests in flight finish on SIGTERM/SIGINT",
    )
    serve.add_argument("--config", type=Path, default=None, help="TOML config ([serving])")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT) and the model's memory",
    )
    serve.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus /metrics on this port"
    )
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    serve.add_argument(
        "--event-store",
        default=None,
        help="event store URL (default: serving.event_store, else MODEL_DIR/events.db)",
    )
    serve.add_argument(
        "--log-format", choices=["text", "json"], default="json", help="log line format"
    )
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one log line per call: request id, method, status, milliseconds",
    )
    serve.add_argument(
        "--console-port",
        type=_port,
        default=None,
        help="also serve the operator console on this port (0 picks a free one)",
    )
    serve.set_defaults(run=_serve)

    console = roles.add_parser(
        "console", help="the operator console: customers, segments, campaigns, models (web)"
    )
    console.add_argument("--model-dir", type=Path, required=True)
    console.add_argument("--host", default="127.0.0.1")
    console.add_argument("--port", type=_port, default=8080, help="0 picks a free port")
    console.add_argument(
        "--config", type=Path, default=None, help="the servers' TOML config (keys, campaigns)"
    )
    console.add_argument("--event-store", default=None, help="the servers' event store URL")
    console.add_argument(
        "--metrics-url", default="", help="a server's Prometheus /metrics URL, for the overview"
    )
    console.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    console.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    console.set_defaults(run=_console)

    for name, helptext, key in (
        ("recommend", "ask a server for a user's recommendations", "user"),
        ("similar", "ask a server for items similar to an item", "item"),
    ):
        client = roles.add_parser(name, help=helptext)
        _add_client_flags(client)
        client.add_argument(f"--{key}", required=True)
        client.add_argument("-k", type=int, default=10)
        client.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if key == "user":
            client.add_argument("--exclude", action="append", default=[], metavar="ITEM_ID")
            client.add_argument("--exclude-purchased", action="store_true")
            client.add_argument(
                "--context",
                action="append",
                default=[],
                metavar="ITEM_ID",
                help="an item the visitor is looking at (repeatable)",
            )
        client.set_defaults(run=_recommend if key == "user" else _similar)
    rank = roles.add_parser("rank", help="ask a server to re-rank your candidate items for a user")
    _add_client_flags(rank)
    rank.add_argument("--user", required=True)
    rank.add_argument("items", nargs="+", metavar="ITEM_ID", help="the candidates, 1..500")
    rank.add_argument("--context", action="append", default=[], metavar="ITEM_ID")
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank.set_defaults(run=_rank)
    together = roles.add_parser(
        "together", help="ask a server what is bought together with items (a cart)"
    )
    _add_client_flags(together)
    together.add_argument("items", nargs="*", metavar="ITEM_ID", help="the cart (may be empty)")
    together.add_argument("-k", type=int, default=10)
    together.add_argument("--json", action="store_true", help="print JSON instead of a table")
    together.set_defaults(run=_together)
    page = roles.add_parser("page", help="ask a server for a visitor's whole page of rows")
    _add_client_flags(page)
    page.add_argument("--user", required=True)
    page.add_argument("--context", action="append", default=[], metavar="ITEM_ID")
    page.add_argument("--json", action="store_true", help="print JSON instead of a table")
    page.set_defaults(run=_page)
    categories = roles.add_parser(
        "categories", help="ask a server for a visitor's top categories or brands (JSON)"
    )
    _add_client_flags(categories)
    categories.add_argument("--user", required=True)
    categories.add_argument("-k", type=int, default=5)
    categories.add_argument("--kind", choices=["category", "brand"], default="category")
    categories.set_defaults(run=_categories)
    viewed = roles.add_parser(
        "recently-viewed", help="ask a server what a visitor viewed lately (JSON)"
    )
    _add_client_flags(viewed)
    viewed.add_argument("--user", required=True)
    viewed.add_argument("-k", type=int, default=10)
    viewed.set_defaults(run=_recently_viewed)
    merge = roles.add_parser(
        "merge-users", help="attach an anonymous visitor's events to the customer who logged in"
    )
    _add_client_flags(merge)
    merge.add_argument("--anonymous", required=True, help="the id before logging in")
    merge.add_argument("--user", required=True, help="the customer's id")
    merge.add_argument("--reason", default="", help="for the audit log")
    merge.set_defaults(run=_merge_users)
    record = roles.add_parser(
        "record-event", help="send a server one event (e.g. a click on a recommendation)"
    )
    _add_client_flags(record)
    record.add_argument("--user", required=True)
    record.add_argument("--item", required=True)
    record.add_argument("--event", required=True, choices=["view", "cart", "purchase"])
    record.add_argument(
        "--recommendation-id", default="", help="the list it follows, for experiment reports"
    )
    record.add_argument("--quantity", type=float, default=1.0)
    record.add_argument("--price", type=float, default=None)
    record.add_argument("--timestamp-ms", type=int, default=0, help="0: now")
    record.set_defaults(run=_record_event)
    profile = roles.add_parser("profile", help="ask a server for a user's profile (JSON)")
    profile.add_argument("user_id")
    _add_client_flags(profile)
    profile.set_defaults(run=_profile)
    models = roles.add_parser("models", help="published versions")
    models_cmds = models.add_subparsers(dest="models_command", required=True)
    listing = models_cmds.add_parser("list", help="versions, newest last; * marks current")
    listing.add_argument("--model-dir", type=Path, required=True)
    listing.set_defaults(run=_models_list)
    rollback = models_cmds.add_parser("rollback", help="make an older version current")
    rollback.add_argument("version")
    rollback.add_argument("--model-dir", type=Path, required=True)
    rollback.set_defaults(run=_models_rollback)

    load = roles.add_parser(
        "loadtest", help="closed- or open-loop load against a server; HDR latency report"
    )
    load.add_argument("--target", default="127.0.0.1:50051")
    load.add_argument(
        "--model-dir", type=Path, required=True, help="published model to draw ids from"
    )
    load.add_argument("--duration", type=float, default=10.0, help="seconds (always stops)")
    load.add_argument("--requests", type=int, default=0, help="stop after this many (0: no cap)")
    load.add_argument("--concurrency", type=int, default=32, help="closed loop: callers")
    load.add_argument(
        "--rate", type=float, default=0.0, help="open loop: calls per second (0: closed loop)"
    )
    load.add_argument("--channels", type=int, default=4, help="connections per process")
    load.add_argument("--processes", type=int, default=1, help="client processes")
    load.add_argument(
        "--mix",
        default="Recommend=0.8,SimilarItems=0.15,RecordEvents=0.05",
        help="RPC=weight,... (Recommend, SimilarItems, RecordEvents)",
    )
    load.add_argument("-k", type=int, default=10)
    load.add_argument("--zipf", type=float, default=1.1, help="skew of user popularity")
    load.add_argument("--unknown-share", type=float, default=0.05, help="share of unknown users")
    load.add_argument("--timeout", type=float, default=5.0, help="per call, seconds")
    load.add_argument("--api-key", default="")
    load.add_argument("--tls-ca", type=Path, default=None)
    load.add_argument("--seed", type=int, default=1)
    load.add_argument(
        "--live",
        action="store_true",
        help="count this traffic as real: experiment impressions and stored events, which the "
        "next training run reads (default: marked as a load test and kept out of both)",
    )
    load.add_argument("--json", type=Path, default=None, help="write the report here")
    load.set_defaults(run=_loadtest)

    batch = roles.add_parser(
        "batch-recommend", help="top k for every user of the current model, to Parquet or CSV"
    )
    batch.add_argument("--model-dir", type=Path, required=True)
    batch.add_argument(
        "--out", type=Path, required=True, help="file to write: .parquet, or .csv (lists |-joined)"
    )
    batch.add_argument("-k", type=int, default=10)
    batch.add_argument("--limit", type=int, default=0, help="only the first N users (0: all)")
    batch.add_argument("--batch", type=int, default=1024, help="users scored together")
    batch.add_argument("--exclude-purchased", action="store_true")
    _add_server_state_flags(batch)
    batch.set_defaults(run=_batch_recommend)

    audience = roles.add_parser("audience", help="campaign audiences")
    audience_cmds = audience.add_subparsers(dest="audience_command", required=True)
    export = audience_cmds.add_parser(
        "export", help="the users most likely to buy, ranked, to Parquet or CSV"
    )
    export.add_argument("--model-dir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help=".parquet or .csv")
    target = export.add_mutually_exclusive_group()
    target.add_argument("--item", help="item id (a new catalogue item works too)")
    target.add_argument("--category")
    export.add_argument("--segment", help="segment id, e.g. rfm:at_risk or cluster:3")
    export.add_argument("-k", type=int, default=0, help="users to keep (0: every eligible user)")
    export.add_argument("--exclude-buyers", action="store_true")
    _add_server_state_flags(export)
    export.set_defaults(run=_audience_export)

    campaign = roles.add_parser("campaign", help="campaigns with a control group, and uplift")
    campaign_cmds = campaign.add_subparsers(dest="campaign_command", required=True)
    create = campaign_cmds.add_parser(
        "create", help="choose an audience, hold out a control group, store the campaign"
    )
    create.add_argument("--model-dir", type=Path, required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--item", default="", help="audience: likely buyers of this item")
    create.add_argument("--category", default="", help="audience: likely buyers in this category")
    create.add_argument("--segment", default="", help="audience: within this segment")
    create.add_argument("--min-churn-risk", type=float, default=None)
    create.add_argument("--stage", action="append", default=[], help="only this lifecycle stage")
    create.add_argument(
        "--attribute", action="append", default=[], metavar="NAME=VALUE",
        help="only users whose users-file attribute has this value",
    )  # fmt: skip
    create.add_argument("--size", type=int, default=0, help="at most this many members")
    create.add_argument("--control-share", type=float, default=0.2)
    create.add_argument("--offer-item", action="append", default=[], metavar="ITEM_ID")
    create.add_argument("--offer-category", default="")
    create.add_argument(
        "--offer-recommendations", type=int, default=0, metavar="K",
        help="offer each member their own top K recommendations",
    )  # fmt: skip
    create.add_argument("--conversion", choices=["offered", "any"], default="offered")
    create.add_argument("--window-days", type=float, default=14.0)
    create.add_argument(
        "--channel", default="",
        help="reach only members opted in to this channel ([serving.campaigns] channels), "
        "or 'best': each member's first channel they opted in to",
    )  # fmt: skip
    create.add_argument(
        "--salt", default="", help="the control split's salt (default: a fresh random one)"
    )
    _add_server_state_flags(create)
    create.set_defaults(run=_campaign_create)
    for command, helptext in (
        ("list", "campaigns stored beside the model"),
        ("show", "one campaign's definition and group sizes (JSON)"),
        ("export", "write the treatment group (CSV or Parquet)"),
        ("report", "conversion and revenue per arm, the uplift with 95% CIs"),
        ("simulate", "sample shop: record purchases answering a campaign, with a known uplift"),
    ):
        sub = campaign_cmds.add_parser(command, help=helptext)
        sub.add_argument("--model-dir", type=Path, required=True)
        sub.add_argument("--event-store", default="")
        if command != "list":
            sub.add_argument("--name", required=True)
        if command == "export":
            sub.add_argument("--out", type=Path, required=True)
        if command == "report":
            sub.add_argument("--out", type=Path, default=None, help="report.md/.png/.json here")
        if command == "simulate":
            sub.add_argument("--base-rate", type=float, default=0.05, help="everyone's conversion")
            sub.add_argument("--uplift", type=float, default=0.05, help="the treated's extra")
            sub.add_argument("--seed", type=int, default=0)
        sub.set_defaults(run=_campaign_command)

    segments = roles.add_parser("segments", help="customer segments")
    segments_cmds = segments.add_subparsers(dest="segments_command", required=True)
    seg_report = segments_cmds.add_parser(
        "report", help="segments.md with charts (PNG) for the current model"
    )
    seg_report.add_argument("--model-dir", type=Path, required=True)
    seg_report.add_argument("--out", type=Path, required=True, help="directory to write")
    seg_report.set_defaults(run=_segments_report)

    noop = roles.add_parser(
        "noop-server", help="benchmark baseline: answers at once with a fixed response"
    )
    noop.add_argument("--host", default="127.0.0.1")
    noop.add_argument("--port", type=_port, default=50052)
    noop.add_argument("-k", type=int, default=10, help="items in each response")
    noop.set_defaults(run=_noop_server)

    experiments = roles.add_parser("experiments", help="A/B experiment results")
    experiments_cmds = experiments.add_subparsers(dest="experiments_command", required=True)
    report = experiments_cmds.add_parser(
        "report",
        help="impressions, click-through, conversion and revenue per variant, with 95% CIs",
    )
    report.add_argument("--event-store", required=True, help="e.g. sqlite:///var/models/events.db")
    report.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="value purchases stored without a price at the current model's catalogue price",
    )
    report.add_argument("--experiment", default=None, help="only this experiment")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_experiments_report)

    check = roles.add_parser("health", help="exit 0 if a server reports SERVING, else 1")
    _add_client_flags(check, timeout=2.0)
    check.add_argument("--service", default="", help="service name; empty for the server")
    check.set_defaults(run=_health)
    return parser


def _add_server_state_flags(parser: argparse.ArgumentParser) -> None:
    """An offline command that must answer as the servers do: their config and their store."""
    parser.add_argument(
        "--config", type=Path, default=None, help="the servers' TOML config: its [serving] rules"
    )
    parser.add_argument(
        "--event-store",
        default="",
        help="the servers' store, whose events and deletions count (default: events.db beside "
        "the models, if there is one)",
    )


def _add_client_flags(parser: argparse.ArgumentParser, timeout: float = 5.0) -> None:
    """Where and how a client command calls a server (see _connection)."""
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of a server")
    parser.add_argument("--timeout", type=float, default=timeout)
    parser.add_argument("--api-key", default="", help="API key (default: $RECSVC_API_KEY)")
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA file: call over TLS")
    parser.add_argument(
        "--tls-server-name", default="", help="the name the server's certificate carries"
    )


def _add_input_flags(parser: argparse.ArgumentParser, events_required: bool = True) -> None:
    parser.add_argument(
        "--events",
        required=events_required,
        help="events CSV or Parquet (with --engine spark: Parquet, a path or a cluster URL)",
    )
    parser.add_argument("--items", type=Path, default=None, help="items (catalogue) file")
    parser.add_argument("--users", type=Path, default=None, help="users file")
    parser.add_argument("--config", type=Path, default=None, help="TOML config (see recsvc.toml)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # faiss logs each instruction set it fails to load at INFO: noise that reads like errors.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code = args.run(args)
    except (BadInput, InvalidArgument, NotFound) as exc:
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # A path the user gave that cannot be used, not a fault of ours.
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except QualityGateRefused as exc:
        print(f"recsvc: refused: {exc}", file=sys.stderr)
        return EXIT_GATE_REFUSED
    except PublishFailed as exc:
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Unavailable as exc:
        print(f"recsvc: unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError):
            print(f"recsvc: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_FAILED
        logging.getLogger("recsvc").exception("failed")
        return EXIT_FAILED
    return EXIT_OK if code is None else code


if __name__ == "__main__":
    sys.exit(main())
