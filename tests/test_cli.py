"""The `recsvc` command: generate, validate and train, with the documented exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_lines

from recsvc.cli.main import main
from recsvc.modelstore import ModelStore

RECSVC = str(Path(sys.executable).with_name("recsvc"))


def test_generate_then_train_publishes_a_current_version(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    assert (
        main(
            [
                "data",
                "generate",
                "--seed",
                "3",
                "--users",
                "120",
                "--items",
                "60",
                "--weeks",
                "3",
                "--out",
                str(shop),
            ]
        )
        == 0
    )
    for name in ("events.csv", "items.csv", "users.csv"):
        assert (shop / name).stat().st_size > 0
    model_dir = tmp_path / "models"
    assert (
        main(
            [
                "train",
                "--events",
                str(shop / "events.csv"),
                "--items",
                str(shop / "items.csv"),
                "--users",
                str(shop / "users.csv"),
                "--model-dir",
                str(model_dir),
            ]
        )
        == 0
    )
    store = ModelStore(model_dir)
    assert store.current_version() in store.versions()


def test_generate_is_repeatable_for_a_seed(tmp_path: Path) -> None:
    for name in ("a", "b"):
        main(
            [
                "data",
                "generate",
                "--seed",
                "5",
                "--users",
                "50",
                "--items",
                "40",
                "--out",
                str(tmp_path / name),
            ]
        )
    assert (tmp_path / "a" / "events.csv").read_bytes() == (
        tmp_path / "b" / "events.csv"
    ).read_bytes()


def test_validate_exits_2_when_rows_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_lines(
        tmp_path / "good.csv", "user_id,item_id,event,timestamp", "u1,i1,view,1740823200"
    )
    assert (
        main(["data", "validate", "--events", str(good), "--rejects-dir", str(tmp_path / "rj")])
        == 0
    )
    bad = write_lines(
        tmp_path / "bad.csv",
        "user_id,item_id,event,timestamp",
        "u1,i1,view,1740823200",
        "u1,i1,stare,1740823200",
    )
    assert (
        main(["data", "validate", "--events", str(bad), "--rejects-dir", str(tmp_path / "rj")]) == 2
    )
    out = capsys.readouterr().out
    assert "1 rejected (unknown_event 1)" in out
    assert (tmp_path / "rj" / "bad.csv.rejects.csv").exists()


@pytest.mark.parametrize("text", ["[model.als]\nfactors = -", '[model]\ntype = "deep-magic"\n'])
def test_bad_config_exits_2(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    events = write_lines(
        tmp_path / "e.csv", "user_id,item_id,event,timestamp", "u1,i1,view,1740823200"
    )
    assert (
        main(
            [
                "train",
                "--events",
                str(events),
                "--model-dir",
                str(tmp_path / "m"),
                "--config",
                str(config),
            ]
        )
        == 2
    )


def test_evaluate_writes_side_by_side_reports(shop_inputs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--events",
                str(shop_inputs.events),
                "--items",
                str(shop_inputs.items),
                "--users",
                str(shop_inputs.users),
                "--out",
                str(out),
                "--models",
                "als,itemknn,bpr,lightfm,ease",
            ]
        )
        == 0
    )
    import json

    result = json.loads((out / "evaluation.json").read_text())
    assert set(result["models"]) - {"blend"} == {
        "als",
        "itemknn",
        "bpr",
        "lightfm",
        "ease",
        "popularity",
        "trending",
    }
    table = (out / "evaluation.md").read_text()
    for name in result["models"]:
        assert f"| {name} |" in table
    assert "New items only" in table
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_recommend_writes_every_users_list(trained, tmp_path) -> None:
    import pyarrow.parquet as pq

    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel
    from recsvc.serving.core import RecommenderCore

    out = tmp_path / "lists.parquet"
    assert (
        main(
            [
                "batch-recommend",
                "--model-dir",
                str(trained.model_dir),
                "--out",
                str(out),
                "-k",
                "5",
                "--batch",
                "300",
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    published = PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))
    assert table.num_rows == published.user_ids.size
    core = RecommenderCore()
    core.swap(published)
    row = table.slice(17, 1).to_pylist()[0]
    served = [i.item_id for i in core.recommend(row["user_id"], 5).items]
    assert row["item_ids"] == served
    unavailable = set(published.item_ids[~published.items.available].tolist())
    assert not unavailable & {i for items in table.column("item_ids").to_pylist() for i in items}


def test_batch_recommend_leaves_out_users_forgotten_since_training(trained, tmp_path) -> None:
    import pyarrow.csv as pa_csv

    from recsvc.events import open_event_store

    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_event_store(url)
    store.forget("u0001", "test")
    store.close()
    out = tmp_path / "lists.csv"
    command = ["batch-recommend", "--model-dir", str(trained.model_dir), "--out", str(out)]
    assert main([*command, "--event-store", url]) == 0
    users = pa_csv.read_csv(out).column("user_id").to_pylist()
    assert "u0001" not in users and "u0002" in users
    assert len(users) == trained.manifest["n_users"] - 1


BAD_ARGUMENTS = {
    "data generate": ["data", "generate", "--out", "/proc/version/shop"],
    "data validate": ["data", "validate", "--events", "{tmp}/missing.csv"],
    "data import": ["data", "import", "--format", "online-retail", "{tmp}/nothing", "{tmp}/out"],
    "train": ["train", "--events", "{tmp}/missing.csv", "--model-dir", "{tmp}/m"],
    "train (events dir)": ["train", "--events", "{tmp}", "--model-dir", "{tmp}/m"],
    "train (store)": ["train", "--events", "{events}", "--model-dir", "{tmp}/m",
                      "--event-store", "sqlite:///{tmp}/typo.db"],
    "evaluate": ["evaluate", "--events", "{tmp}/missing.csv", "--out", "{tmp}/report"],
    "tune": ["tune", "--events", "{events}", "--out", "{tmp}/t.toml", "--models", "nope"],
    "serve": ["serve", "--model-dir", "{tmp}/typo", "--port", "0"],
    "recommend": ["recommend", "--user", "u1", "--tls-ca", "{tmp}/missing.pem"],
    "similar": ["similar", "--item", "i1", "--tls-ca", "{tmp}/missing.pem"],
    "profile": ["profile", "u1", "--tls-ca", "{tmp}/missing.pem"],
    "health": ["health", "--tls-ca", "{tmp}/missing.pem"],
    "models list": ["models", "list", "--model-dir", "{tmp}/typo"],
    "models rollback": ["models", "rollback", "v1", "--model-dir", "{tmp}/typo"],
    "loadtest": ["loadtest", "--model-dir", "{models}", "--mix", "Bogus=1.0", "--duration", "1"],
    "batch-recommend": ["batch-recommend", "--model-dir", "{tmp}/typo", "--out", "{tmp}/b.csv"],
    "audience export (category)": ["audience", "export", "--model-dir", "{models}",
                                   "--out", "{tmp}/a.csv", "--category", "gardn"],
    "audience export (segment)": ["audience", "export", "--model-dir", "{models}",
                                  "--out", "{tmp}/a.csv", "--segment", "rfm:champ"],
    "audience export (item)": ["audience", "export", "--model-dir", "{models}",
                               "--out", "{tmp}/a.csv", "--item", "i9999"],
    "segments report": ["segments", "report", "--model-dir", "{tmp}/typo", "--out", "{tmp}/r"],
    "noop-server": ["noop-server", "--port", "99999"],
    "experiments report": ["experiments", "report", "--event-store", "sqlite:///{tmp}/typo.db"],
    "record-event": ["record-event", "--user", "u", "--item", "i", "--event", "click"],
    "unknown flag": ["train", "--evnets", "x"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_ARGUMENTS))
def test_every_command_answers_a_bad_argument_with_exit_2_and_one_line(
    name: str, trained, shop_inputs, tmp_path: Path
) -> None:
    values = {"tmp": tmp_path, "events": shop_inputs.events, "models": trained.model_dir}
    argv = [a.format(**values) for a in BAD_ARGUMENTS[name]]
    done = subprocess.run([RECSVC, *argv], capture_output=True, text=True, timeout=120)
    # Progress lines ("[train 0.1s] ...") may come first; then one line says what is wrong.
    lines = [x for x in done.stderr.strip().splitlines() if not x.startswith("[")]
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("recsvc") and "error" in lines[0], lines
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "typo").exists()


def test_spark_engine_without_pyspark_says_what_to_install(
    shop_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if the [spark] extra were absent
    command = ["train", "--events", str(shop_inputs.events), "--model-dir", str(tmp_path)]
    assert main([*command, "--engine", "spark"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "recsvc: error: the spark engine needs pyspark: pip install 'recsvc[spark]' "
        "(and a Java 17 runtime)"
    )


def test_no_command_prints_faiss_loader_noise(trained) -> None:
    """faiss logs each instruction set it fails to load at INFO; a command must not pass that
    on (it reads like an error)."""
    script = (
        "import sys\nfrom recsvc.cli.main import main\n"
        f"code = main(['models', 'list', '--model-dir', {str(trained.model_dir)!r}])\n"
        "import faiss\nsys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "faiss" not in done.stderr, done.stderr
