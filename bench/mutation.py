"""Mutation testing of the code where a silent regression hurts users most (`make mutation`).

mutmut (3.x) plants one change per mutant behind a switch and runs, for each mutant, only the
tests that reach the mutated function; a mutant the tests catch is killed, one they miss
survived. The areas below are sets of functions, so a full run stays near an hour on two cores.
Survivors judged equivalent (no test could tell them from the original) are listed with their
reason in tests/mutation_equivalents.txt and reported apart; every other survivor is a test to
write.

mutmut mutates a copy of the code found by folder, and imports must find the copy: each area
runs in its own folder of var/mutation/, judged by its own fast tests (AREA_TESTS), where the
layers above the library sit inside recsvc/ as the import names say (recsvc/training, ...).
Results stay there between runs; a changed function is tested again.

    python bench/mutation.py [--area A]    # run what is not yet run and the survivors, report
    python bench/mutation.py --survivors   # test only the survivors again (after new tests)
    python bench/mutation.py --report      # report the results already there
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "var" / "mutation"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
# Folder -> where it sits in the staged copy (its import name).
LAYOUT = {
    "recsvc": "recsvc",
    "training": "recsvc/training",
    "service": "recsvc/service",
    "loadtest": "recsvc/loadtest",
    "cli": "recsvc/cli",
    "console": "recsvc/console",
    "tests": "tests",
}
MUTATED = [
    "recsvc/experiments.py",
    "recsvc/campaigns.py",
    "recsvc/modelstore.py",
    "recsvc/events/sqlite.py",
    "recsvc/serving/core.py",
    "recsvc/serving/policy.py",
    "recsvc/serving/validation.py",
    "recsvc/serving/state.py",
    "recsvc/training/ingest.py",
    "recsvc/training/evaluate.py",
    "recsvc/training/tune.py",
    "recsvc/training/pipeline.py",
]
# Tests that reach the code only through a subprocess (the installed, unmutated code) or
# repeat a whole training run a faster test already covers: never selected.
LEFT_OUT = [
    "tests/test_retraining_job.py::test_sigkill_during_publish_leaves_the_previous_model_current",
    "tests/test_eventstore.py::test_processes_opening_a_new_store_together_all_succeed",
    "tests/test_retraining_job.py::test_keeps_the_last_n_versions_and_rolls_back",
    "tests/test_training.py::test_same_input_and_seed_give_the_same_model",
    "tests/test_retraining_job.py::test_config_file_alone_is_a_complete_job",
]
CORE = "recsvc.serving.core.xǁRecommenderCoreǁ"
POLICY = "recsvc.serving.policy.xǁRankingPolicyǁ"
# Area -> mutmut name patterns (module.x_function or module.xǁClassǁmethod).
AREAS: dict[str, list[str]] = {
    "request validation and filters": [
        "recsvc.serving.validation.*",
        f"{CORE}check_events*",
        f"{POLICY}_allowed*",
    ],
    "ranking policy and rules": [f"{POLICY}*", "recsvc.serving.policy.x_*"],
    "quality gate": [
        "recsvc.training.pipeline.x_quality_gate*",
        "recsvc.training.pipeline.x_refit_published*",
    ],
    "holdout and tuning": [
        "recsvc.training.evaluate.x_holdout_split*",
        "recsvc.training.evaluate.x_holdout_from_mask*",
        "recsvc.training.evaluate.x__last_events*",
        "recsvc.training.evaluate.x_validation_holdout*",
        "recsvc.training.tune.x_tune__*",
        # The search both `recsvc tune` and the job run, and the job's use of it (issue 16).
        "recsvc.training.search.x__float*",
        "recsvc.training.search.x__int*",
        "recsvc.training.search.x_suggest*",
        "recsvc.training.search.x_with_signals*",
        "recsvc.training.search.x_default_params*",
        "recsvc.training.search.x_search__*",
        "recsvc.training.search.xǁSearchǁ*",
        "recsvc.training.pipeline.x_tune_parameters*",
    ],
    "ingest validation": [
        "recsvc.training.ingest.x_load_events*",
        "recsvc.training.ingest.x_load_items*",
        "recsvc.training.ingest.x_load_users*",
        "recsvc.training.ingest.x__reject_repeated_ids*",
        "recsvc.training.ingest.x__drop_duplicates*",
        "recsvc.training.ingest.x_parse_timestamps_ms*",
        "recsvc.training.ingest.x__cast_dates*",
        "recsvc.training.ingest.x_parse_numbers*",
        "recsvc.training.ingest.x__check_columns*",
        "recsvc.training.ingest.xǁRowChecksǁ*",
        "recsvc.training.ingest.xǁRejectsWriterǁ*",
    ],
    "deletion": [
        f"{CORE}forget_user*",
        f"{CORE}sync*",
        # Recommend itself: "recommend*" would also take RecommendPage's and
        # RecommendCategories' methods, which the deletion tests were never meant to judge.
        f"{CORE}recommend__mutmut_*",
        "recsvc.serving.state.xǁRealtimeHistoryǁforget*",
        "recsvc.events.sqlite.xǁSQLiteEventStoreǁforget*",
        "recsvc.events.sqlite.xǁSQLiteEventStoreǁchanges_after*",
        "recsvc.training.pipeline.x_leave_out_forgotten*",
    ],
    "experiments' statistics": ["recsvc.experiments.*"],
    "model store": ["recsvc.modelstore.*"],
    # Issue 20: the control split, the frequency count, the spec's checks and the uplift report.
    "campaign statistics": ["recsvc.campaigns.*"],
}
# Area -> the fast tests that judge it (an --area run collects only these): the training tests
# reach ingest and the policy too, but repeat what these check at many times the cost.
AREA_TESTS: dict[str, list[str]] = {
    "request validation and filters": [
        "tests/test_validation.py", "tests/test_core.py", "tests/test_policy.py",
    ],
    # The frontend's calls (rank, bought together, buy again, newest) live in the policy too.
    "ranking policy and rules": [
        "tests/test_core.py", "tests/test_policy.py", "tests/test_ann.py",
        "tests/test_marketing.py", "tests/test_frontend.py", "tests/test_stage_policy.py",
    ],
    # The direct tests first (seconds a mutant); the job's runs judge what they leave.
    "quality gate": ["tests/test_quality_gate.py", "tests/test_retraining_job.py"],
    "holdout and tuning": ["tests/test_holdout.py", "tests/test_training.py"],
    "ingest validation": ["tests/test_ingest.py"],
    "deletion": [
        "tests/test_deletion.py", "tests/test_core.py", "tests/test_eventstore.py",
        "tests/test_retraining_job.py",
    ],
    "experiments' statistics": ["tests/test_experiments.py"],
    "model store": ["tests/test_modelstore.py", "tests/test_retraining_job.py"],
    "campaign statistics": ["tests/test_campaigns.py"],
}  # fmt: skip
KILLED = {
    1,
    3,
    36,
    -24,
    24,
    152,
    255,
}  # a failing test, or a mutant that never finishes (mutmut counts both as caught)
TIMEOUTS = {36, -24, 24, 152, 255}
NO_TESTS = 33  # mutmut's code for a mutant no test reaches


def area_dir(area: str) -> Path:
    return STAGE / re.sub(r"[^a-z]+", "-", area.lower()).strip("-")


def test_map(area: str) -> Path:
    """mutmut's record of which tests reach which function, for the area's folder."""
    return area_dir(area) / "mutants" / "mutmut-stats.json"


def area_files(area: str) -> list[str]:
    """The staged files holding an area's functions (from its mutmut name patterns)."""
    modules = {re.split(r"\.x[_ǁ]|\.\*$", pattern)[0] for pattern in AREAS[area]}
    return sorted(module.replace(".", "/") + ".py" for module in modules)


def stage(area: str) -> None:
    """The code and tests in the area's folder of var/mutation/, laid out by import name, with
    mutmut's config for that area alone; models cached for its tests are dropped, to be
    trained again by this code. Each area has its own folder because mutmut drops every result
    of a folder whose test selection changes."""
    target_dir = area_dir(area)
    shutil.rmtree(target_dir / "model-cache", ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for folder, target in LAYOUT.items():
        shutil.copytree(ROOT / folder, target_dir / target, ignore=ignore, dirs_exist_ok=True)
    settings = tomllib_dump(
        {
            "tool.mutmut": {
                "source_paths": ["recsvc"],
                "only_mutate": area_files(area),
                "pytest_add_cli_args_test_selection": AREA_TESTS[area],
                "pytest_add_cli_args": [
                    "-p", "no:cacheprovider", "-q", "--timeout=600",
                    *[arg for test in LEFT_OUT for arg in ("--deselect", test)],
                ],
                # A mutant slower than 5x its tests' clean run (plus 1 s) counts as caught.
                "timeout_multiplier": 5.0,
                "process_isolation": "forkserver",
            },
            "tool.pytest.ini_options": {"testpaths": ["tests"], "timeout": 300},
        }
    )  # fmt: skip
    (target_dir / "pyproject.toml").write_text(settings)


def tomllib_dump(tables: dict[str, dict[str, object]]) -> str:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def equivalents() -> dict[str, str]:
    """Survivors judged equivalent: name -> why."""
    found = {}
    for line in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            found[name] = why.strip()
    return found


def results(area: str) -> dict[str, int | None]:
    """Exit code of each of the area's mutants, from its folder's records (None: not run)."""
    codes: dict[str, int | None] = {}
    for meta in (area_dir(area) / "mutants").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return {
        name: code
        for name, code in codes.items()
        if any(fnmatch.fnmatchcase(name, p) for p in AREAS[area])
    }


def survivors(area: str) -> list[str]:
    """The area's survivors not judged equivalent."""
    equivalent = equivalents()
    return sorted(
        name
        for name, code in results(area).items()
        if code is not None and code not in KILLED and name not in equivalent
    )


def not_run(area: str) -> list[str]:
    return sorted(name for name, code in results(area).items() if code is None)


def source_of(staged: str) -> Path:
    """The checkout's file for a staged path (recsvc/training/x.py -> training/x.py)."""
    for folder, target in LAYOUT.items():
        if staged.startswith(target + "/") and folder != "recsvc":
            return ROOT / folder / staged.removeprefix(target + "/")
    return ROOT / staged


def unmutated(area: str) -> list[str]:
    """The area's functions mutmut leaves alone because they are decorated (it mutates no
    decorated function but a static or class method): their code is never tested by mutation,
    so the report names them rather than let them pass unseen."""
    found = []
    for staged in area_files(area):
        module = staged.removesuffix(".py").replace("/", ".")
        tree = ast.parse(source_of(staged).read_text(encoding="utf-8"))
        scopes = [("x_", tree.body)] + [
            (f"xǁ{node.name}ǁ", node.body) for node in tree.body if isinstance(node, ast.ClassDef)
        ]
        for prefix, body in scopes:
            for node in body:
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                name = f"{module}.{prefix}{node.name}"
                plain = [ast.unparse(d) for d in node.decorator_list]
                if plain in ([], ["staticmethod"], ["classmethod"]):
                    continue
                if any(fnmatch.fnmatchcase(f"{name}__mutmut_1", p) for p in AREAS[area]):
                    found.append(f"{name} (@{', @'.join(plain)})")
    return found


def report() -> int:
    equivalent = equivalents()
    print(
        f"{'area':<34}{'mutants':>8}{'killed':>8}{'of which timeouts':>18}{'equiv.':>8}"
        f"{'survived':>9}{'score':>8}"
    )
    missed = 0
    for area in AREAS:
        codes = results(area)
        run = [n for n, code in codes.items() if code is not None]
        killed = [n for n in run if codes[n] in KILLED]
        timeouts = sum(codes[n] in TIMEOUTS for n in killed)
        same = [n for n in run if n not in killed and n in equivalent]
        survived = sorted(set(run) - set(killed) - set(same))
        scored = len(run) - len(same)
        score = len(killed) / scored if scored else 1.0
        missed += score < 0.85 or len(run) < len(codes) or not codes
        waiting = f"  ({len(codes) - len(run)} not run)" if len(run) < len(codes) else ""
        shown = f"{score:>8.1%}" if codes else f"{'-':>8}  (never run here)"
        print(
            f"{area:<34}{len(codes):>8}{len(killed):>8}{timeouts:>18}{len(same):>8}{len(survived):>9}"
            f"{shown}{waiting}"
        )
        for name in survived:
            print(f"    survived: {name}")
        for name in unmutated(area):
            print(f"    not mutated, decorated: {name}")
    return 1 if missed else 0


def remap_if_tests_changed(area: str) -> None:
    """mutmut maps tests to the functions they reach once, and later maps only tests it has
    not seen: a test changed in place keeps its old map, and a mutant it would now kill is
    never shown to it. So when the area's test files change, the map is dropped, and the next
    run maps every test again (results are kept: they live in the mutants' records)."""
    digest = hashlib.sha256()
    for name in [*sorted(AREA_TESTS[area]), "tests/helpers.py", "tests/conftest.py"]:
        digest.update((ROOT / name).read_bytes())
    seen = area_dir(area) / "tests.sha256"
    if seen.exists() and seen.read_text() != digest.hexdigest():
        test_map(area).unlink(missing_ok=True)
    seen.write_text(digest.hexdigest())


# mutmut makes the mutants of a changed function only as a run starts; this has it make them
# (its own steps, mutmut pinned at 3.8.1) without running any, so what to run is decided after.
GENERATE = """
import sys
from mutmut.__main__ import create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir
set_mutant_under_test("mutant_generation")
copy_src_dir()
copy_also_copy_files()
create_mutants(int(sys.argv[1]))
"""


def remap_if_functions_unmapped(area: str) -> None:
    """A function mutmut did not mutate before (one that lost its decorator, or new to the
    area) has no tests in the map, and its mutants would all count as reached by none: the
    map is dropped so that the run maps every test again."""
    stats = test_map(area)
    if not stats.exists():
        return
    mapped = json.loads(stats.read_text())["tests_by_mangled_function_name"]
    waiting = {
        name.rpartition("__mutmut_")[0]
        for name, code in results(area).items()
        if code is None or code == NO_TESTS
    }
    if waiting - set(mapped):
        stats.unlink()


def run(area: str, max_children: int, only_survivors: bool) -> None:
    """One mutmut run for the area: every mutant the first time; then those never run (or
    changed since) and the survivors, which new tests may kill. Naming them is what makes
    mutmut test them again: a run without names would redo every mutant."""
    stage(area)
    remap_if_tests_changed(area)
    first = not results(area)
    if not first:
        subprocess.run(
            [sys.executable, "-c", GENERATE, str(max_children)], cwd=area_dir(area), check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        remap_if_functions_unmapped(area)
    names = survivors(area) if only_survivors else sorted({*not_run(area), *survivors(area)})
    if not first and not names:
        return
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # Trained once by the unmutated code, then copied for every mutant's session.
        "RECSVC_TEST_MODEL_CACHE": str(area_dir(area) / "model-cache"),
    }
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.perf_counter()
    subprocess.run(
        [str(mutmut), "run", "--max-children", str(max_children),
         *(AREAS[area] if first else names)],
        cwd=area_dir(area), env=env, check=True,
    )  # fmt: skip
    print(f"{area}: mutmut ran for {time.perf_counter() - started:.0f} s", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only report existing results")
    parser.add_argument("--survivors", action="store_true", help="test only the survivors again")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--area", action="append", choices=list(AREAS), help="only this area (repeatable)"
    )
    args = parser.parse_args()
    if not args.report:
        for area in args.area or AREAS:
            run(area, args.max_children, args.survivors)
    return report()


if __name__ == "__main__":
    sys.exit(main())
