"""The operator console's server time per page, and its screenshots.

Each page is rendered through the console's WSGI application in this process (Flask's test
client: no socket, no browser), so the figure is the console's own time: the serving core's
calls, the event store's reads, the charts and the templates. The first request of each page is
reported apart (charts and caches warm then); the median and the worst of the next `--repeat`
follow. A campaign with a simulated response is created first, so its report page has data.

    .venv/bin/python bench/console.py --model-dir var/models            # the sample shop
    .venv/bin/python bench/million.py --out var/bench/million             # once, ~1M users
    .venv/bin/python bench/console.py --model-dir var/bench/million --user u0000001 --item i0000001
    .venv/bin/python bench/console.py --model-dir var/models --screenshots docs/console

With --screenshots, each page is also opened in headless Chromium (the Debian package) on a
running `recsvc console` and saved as a PNG there, for the README's tour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from recsvc.campaigns import CampaignSpec
from recsvc.config import ServingConfig
from recsvc.console.app import create_app
from recsvc.console.state import ConsoleState
from recsvc.training.sample_shop import campaign_response

RECSVC = str(Path(sys.executable).with_name("recsvc"))
CAMPAIGN = "bench-campaign"


def pages(user: str, item: str, segment: str) -> list[tuple[str, str]]:
    return [
        ("overview", "/"),
        ("customer", f"/customers?user_id={user}"),
        ("customer-filtered", f"/customers?user_id={user}&max_price=50&exclude_purchased=1"),
        ("item", f"/items?item_id={item}"),
        ("segments", "/segments"),
        ("segment", f"/segments/{segment}"),
        ("campaigns", "/campaigns"),
        ("campaign", f"/campaigns/{CAMPAIGN}"),
        ("experiments", "/experiments"),
        ("models", "/models"),
    ]


def prepare(state: ConsoleState, category: str) -> None:
    """A campaign with a simulated response, so that its report has numbers to show."""
    spec = CampaignSpec(
        CAMPAIGN,
        category=category,
        size=2000,
        control_share=0.2,
        offer_category=category,
        channel="best" if "push_opt_in" in state.core.serving.published.profiles.attribute_names
        else "",
    )  # fmt: skip
    campaign = state.core.create_campaign(spec)
    model = state.core.serving.published
    catalogue = (model.item_ids, model.items.categories, model.items.price)
    bought = campaign_response(campaign, catalogue, seed=1, base_rate=0.05, uplift=0.08)
    assert state.store is not None
    state.store.append(bought)


def measure(state: ConsoleState, user: str, item: str, repeat: int) -> list[dict[str, object]]:
    app = create_app(state, None)
    client = app.test_client()
    segment = state.core.list_segments()[0]["id"]
    rows = []
    for name, path in pages(user, item, segment):
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        rows.append(
            {
                "page": name,
                "first_ms": times[0],
                "median_ms": statistics.median(times[1:]),
                "worst_ms": max(times[1:]),
            }
        )
        print(
            f"{name:<18} first {times[0]:8.1f} ms   median {rows[-1]['median_ms']:7.1f} ms   "
            f"worst {rows[-1]['worst_ms']:7.1f} ms",
            flush=True,
        )
    return rows


def screenshots(model_dir: Path, store: str, out: Path, user: str, item: str, segment: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out.mkdir(parents=True, exist_ok=True)
    console = subprocess.Popen(
        [RECSVC, "console", "--model-dir", str(model_dir), "--port", "0", "--event-store", store],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert console.stdout is not None
    address = console.stdout.readline().split(": ", 1)[1].strip()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1400", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        for name, path in pages(user, item, segment):
            if name == "customer-filtered":
                continue
            browser.get(address.rstrip("/") + path)
            browser.find_element("tag name", "h1")
            browser.save_screenshot(str(out / f"{name}.png"))
            print(f"wrote {out / (name + '.png')}", flush=True)
    finally:
        browser.quit()
        console.terminate()
        console.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--user", default="u0001")
    parser.add_argument("--item", default="i0001")
    parser.add_argument("--category", default="garden")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        # A store of its own: the benchmark's campaign and events never land in the real one.
        store = f"sqlite:///{scratch}/events.db"
        state = ConsoleState.open(args.model_dir, ServingConfig(), store)
        try:
            prepare(state, args.category)
            segment = state.core.list_segments()[0]["id"]
            measure(state, args.user, args.item, args.repeat)
        finally:
            state.close()
        if args.screenshots is not None:
            screenshots(args.model_dir, store, args.screenshots, args.user, args.item, segment)


if __name__ == "__main__":
    main()
