"""Soak: hours of traffic squeezed into minutes, watching the server's memory.

`recsvc serve` on a published model, an open-loop `recsvc loadtest` at a steady rate with events
mixed in (counted as real: stored, and taken into real-time state), and the server's resident
memory sampled every few seconds. Once the caches are full (the list cache, the real-time
state of the users seen) resident memory must stay flat: the report gives the growth over the
last two thirds of the run and its slope, and draws the curve.

    .venv/bin/python bench/soak.py --model-dir var/models --minutes 10
    .venv/bin/python bench/soak.py --model-dir var/models --minutes 10 \
        --config bench/soak-small-caches.toml --out var/bench/soak-small
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from serving import RECSVC, memory_mib, start, stop, wait_serving

from recsvc.service.workers import free_port

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=600.0, help="calls per second")
    parser.add_argument("--mix", default="Recommend=0.7,SimilarItems=0.1,RecordEvents=0.2")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "soak")
    parser.add_argument("--config", type=Path, help="recsvc serve --config (e.g. smaller caches)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="recsvc-soak-") as work:
        port = free_port("127.0.0.1")
        command = [
            RECSVC, "serve", "--model-dir", str(args.model_dir), "--port", str(port),
            "--event-store", f"sqlite:///{Path(work) / 'events.db'}", "--no-access-log",
        ]  # fmt: skip
        if args.config:
            command += ["--config", str(args.config)]
        server = start(command, "listening on")
        try:
            wait_serving(f"127.0.0.1:{port}")
            load = subprocess.Popen(
                [RECSVC, "loadtest", "--target", f"127.0.0.1:{port}",
                 "--model-dir", str(args.model_dir), "--rate", str(args.rate),
                 "--duration", str(seconds), "--mix", args.mix, "--unknown-share", "0.3",
                 "--live", "--json", str(args.out / "loadtest.json")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            started = time.monotonic()
            samples: list[tuple[float, float, float]] = []  # (s, RSS MiB, anonymous MiB)
            while load.poll() is None:
                memory = memory_mib(server.pid)
                at = time.monotonic() - started
                samples.append((at, memory["VmRSS"], memory["RssAnon"]))
                print(
                    f"{at:7.0f} s  RSS {memory['VmRSS']:7.1f} MiB  "
                    f"anonymous {memory['RssAnon']:7.1f} MiB",
                    flush=True,
                )
                time.sleep(args.every)
            _, errors = load.communicate()
        finally:
            stop(server)
    report = json.loads((args.out / "loadtest.json").read_text())
    times = np.array([s[0] for s in samples])
    anon = np.array([s[2] for s in samples])
    steady = times >= times[-1] / 3
    slope = float(np.polyfit(times[steady] / 60, anon[steady], 1)[0])
    growth = float(anon[steady][-1] - anon[steady][0])
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "mix": args.mix,
        "completed": report.get("completed"),
        "dropped": report.get("dropped"),
        "latency_ms": report.get("latency_ms"),
        "codes": report.get("codes"),
        "anonymous_mib_start_of_steady": round(float(anon[steady][0]), 1),
        "anonymous_mib_end": round(float(anon[-1]), 1),
        "growth_over_last_two_thirds_mib": round(growth, 1),
        "slope_mib_per_minute": round(slope, 2),
        "rss_mib_median": round(statistics.median(s[1] for s in samples), 1),
    }
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if errors.strip():
        print(errors.strip().splitlines()[-1])
    chart(samples, args.out / "soak.png", summary)


def chart(samples: list[tuple[float, float, float]], path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    minutes = [s[0] / 60 for s in samples]
    axis.plot(minutes, [s[1] for s in samples], label="resident (RSS)")
    axis.plot(minutes, [s[2] for s in samples], label="anonymous (the process's own)")
    axis.axvline(minutes[-1] / 3, color="grey", linestyle=":", label="steady part starts")
    axis.set_xlabel("minutes of traffic")
    axis.set_ylabel("MiB")
    axis.set_title(
        f"recsvc serve at {summary['rate']:g} calls/s ({summary['mix']}): "
        f"{summary['slope_mib_per_minute']:+.2f} MiB/min once warm",
        fontsize=9,
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
