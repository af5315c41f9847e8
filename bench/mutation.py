"""Mutation testing of the code where a silent regression hurts users most (`make mutation`).

mutmut (3.x) copies the packages into ./mutants, plants one change per mutant behind a switch,
and runs, for each mutant, only the tests that reach the mutated function. A mutant the tests
catch is killed; one they miss survived. Every area below is a set of functions, so a full run
stays within about an hour on two cores. Survivors judged equivalent (no test could tell them
from the original) are listed with their reason in tests/mutation_equivalents.txt and reported
apart; each other survivor is a test to write.

    python bench/mutation.py            # run what is not yet run, then report
    python bench/mutation.py --report   # report the results already in ./mutants
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
CORE = "service.core.xǁRecommenderCoreǁ"

# Area -> mutmut name patterns (module.x_function or module.xǁClassǁmethod).
AREAS: dict[str, list[str]] = {
    "request validation and filters": [
        f"{CORE}_check_*",
        f"{CORE}_allowed*",
        f"{CORE}record_events*",
        f"{CORE}check_events*",
    ],
    "ranking policy and rules": [
        f"{CORE}recommend*",
        f"{CORE}_list_entry*",
        f"{CORE}_compute_list*",
        f"{CORE}_select*",
        f"{CORE}_pick_*",
        "service.core.x_top_spread*",
    ],
    "quality gate": ["training.pipeline.x_quality_gate*"],
    "holdout and tuning": [
        "training.evaluate.x_holdout_split*",
        "training.evaluate.x_holdout_from_mask*",
        "training.evaluate.x__last_events*",
        "training.evaluate.x_validation_holdout*",
        "training.tune.x_tune__*",
        "training.tune.x_with_signals*",
        "training.tune.x_default_params*",
    ],
    "ingest validation": [
        "training.ingest.x_load_events*",
        "training.ingest.x_load_items*",
        "training.ingest.x_load_users*",
        "training.ingest.x__reject_repeated_ids*",
        "training.ingest.x__drop_duplicates*",
        "training.ingest.x_parse_timestamps_ms*",
        "training.ingest.x__cast_dates*",
        "training.ingest.x_parse_numbers*",
        "training.ingest.x__check_columns*",
        "training.ingest.xǁRowChecksǁ*",
        "training.ingest.xǁRejectsWriterǁ*",
    ],
    "deletion": [
        f"{CORE}forget_user*",
        f"{CORE}sync*",
        "service.core.xǁRealtimeHistoryǁforget*",
        "recsvc.events.xǁSQLiteEventStoreǁforget*",
        "recsvc.events.xǁSQLiteEventStoreǁchanges_after*",
        "training.pipeline.x_leave_out_forgotten*",
    ],
    "experiments' statistics": ["recsvc.experiments.*"],
    "model store": ["recsvc.modelstore.*"],
}
KILLED = {1, 3, 36, -24, 24, 152, 255}  # a failing test, or a mutant that never finishes


def equivalents() -> dict[str, str]:
    """Survivors judged equivalent: name -> why."""
    if not EQUIVALENTS.exists():
        return {}
    found = {}
    for line in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            found[name] = why.strip()
    return found


def results() -> dict[str, int | None]:
    """Every mutant's exit code from mutmut's records (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in (ROOT / "mutants").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def report() -> int:
    codes, equivalent = results(), equivalents()
    print(f"{'area':<34}{'mutants':>8}{'killed':>8}{'equiv.':>8}{'survived':>9}{'score':>8}")
    missed = 0
    for area, patterns in AREAS.items():
        names = [n for n in codes if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        run = [n for n in names if codes[n] is not None]
        killed = [n for n in run if codes[n] in KILLED]
        same = [n for n in run if n not in killed and n in equivalent]
        survived = sorted(set(run) - set(killed) - set(same))
        scored = len(run) - len(same)
        score = len(killed) / scored if scored else 1.0
        missed += score < 0.85
        print(
            f"{area:<34}{len(names):>8}{len(killed):>8}{len(same):>8}{len(survived):>9}"
            f"{score:>8.1%}"
            + (f"  ({len(names) - len(run)} not run)" if len(run) < len(names) else "")
        )
        for name in survived:
            print(f"    survived: {name}")
    return 1 if missed else 0


def run(max_children: int) -> None:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # Trained once by the unmutated code, then copied for every mutant's session.
        "RECSVC_TEST_MODEL_CACHE": str(ROOT / "var" / "mutation-cache"),
    }
    patterns = [p for area in AREAS.values() for p in area]
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.perf_counter()
    subprocess.run(
        [str(mutmut), "run", "--max-children", str(max_children), *patterns],
        cwd=ROOT,
        env=env,
        check=True,
    )
    print(f"mutmut ran for {time.perf_counter() - started:.0f} s", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only report existing results")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if not args.report:
        run(args.max_children)
    return report()


if __name__ == "__main__":
    sys.exit(main())
