"""The operator console: access rules and security through Flask's test client, then the whole
console in headless Chromium (the Debian package, driven by Selenium through chromedriver) as
an operator meets it: sign in, every page, a customer looked up, a campaign created and
exported, the role rules and CSRF."""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import skip_for_missing
from test_server_e2e import RECSVC

from recsvc.access import ApiKeys
from recsvc.config import ServingConfig
from recsvc.console.app import create_app
from recsvc.console.server import ConsoleOptions, ConsoleServer
from recsvc.console.state import ConsoleState
from recsvc.errors import BadInput, NotFound
from recsvc.training.pipeline import TrainResult

KEYS = {"client-key": "client", "analyst-key": "analyst", "admin-key": "admin"}
PAGES = [
    "/",
    "/customers?user_id=u0001",
    "/customers?user_id=someone-new",
    "/items?item_id=i0001",
    "/segments",
    "/segments/rfm:champions",
    "/campaigns",
    "/experiments",
    "/models",
]


@pytest.fixture
def model_dir(trained: TrainResult, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(trained.model_dir, target)
    return target


@pytest.fixture
def state(model_dir: Path) -> Iterator[ConsoleState]:
    opened = ConsoleState.open(model_dir, ServingConfig())
    yield opened
    opened.close()


def _client(state: ConsoleState, secure: bool = False):
    app = create_app(state, ApiKeys(KEYS), secure_cookies=secure)
    app.config["TESTING"] = True
    return app.test_client()


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def _sign_in(client, key: str) -> str:
    token = _token(client.get("/sign-in").get_data(as_text=True))
    response = client.post("/sign-in", data={"key": key, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return _token(client.get("/models").get_data(as_text=True))


def test_sign_in_roles_and_every_page(state: ConsoleState) -> None:
    client = _client(state)
    assert client.get("/customers?user_id=u0001").headers["Location"].endswith("/sign-in")
    token = _token(client.get("/sign-in").get_data(as_text=True))
    for key, status in (("wrong", 401), ("client-key", 401)):
        refused = client.post("/sign-in", data={"key": key, "csrf_token": token})
        assert refused.status_code == status, key
    assert "not an analyst" in refused.get_data(as_text=True), "a frontend's key cannot sign in"
    _sign_in(client, "analyst-key")
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Server-Timing" in response.headers
    customer = client.get("/customers?user_id=u0001").get_data(as_text=True)
    assert "Recommend now" in customer and "Forget this customer" not in customer
    stranger = client.get("/customers?user_id=someone-new").get_data(as_text=True)
    assert "has no profile" in stranger and "fallback" in stranger
    assert client.get("/items?item_id=no-such-item").status_code == 200  # said on the page
    assert client.get("/segments/rfm:no-such").status_code == 404


def test_session_cookie_flags_and_tls(state: ConsoleState) -> None:
    client = _client(state, secure=True)
    token = _token(client.get("/sign-in", base_url="https://localhost").get_data(as_text=True))
    response = client.post(
        "/sign-in",
        data={"key": "analyst-key", "csrf_token": token},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/sign-in"},
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    plain = _client(state)
    token = _token(plain.get("/sign-in").get_data(as_text=True))
    cookie = plain.post("/sign-in", data={"key": "admin-key", "csrf_token": token}).headers[
        "Set-Cookie"
    ]
    assert "HttpOnly" in cookie and "Secure" not in cookie


def test_analysts_read_admins_change_and_every_form_needs_its_token(
    state: ConsoleState, model_dir: Path
) -> None:
    analyst = _client(state)
    token = _sign_in(analyst, "analyst-key")
    forget = {"user_id": "u0002", "confirm": "u0002", "csrf_token": token}
    denied = analyst.post("/customers/forget", data=forget)
    assert denied.status_code == 403 and "admin key" in denied.get_data(as_text=True)
    version = state.models.current_version()
    rollback = {"version": version, "confirm": "yes", "csrf_token": token}
    assert analyst.post("/models/rollback", data=rollback).status_code == 403
    spec = {"name": "x", "category": "garden", "conversion": "any", "csrf_token": token}
    assert analyst.post("/campaigns", data=spec).status_code == 403
    preview = analyst.post("/campaigns/preview", data=spec)
    assert preview.status_code == 200 and "Preview:" in preview.get_data(as_text=True)
    assert state.core.campaigns() == [], "a preview stores nothing"

    admin = _client(state)
    token = _sign_in(admin, "admin-key")
    # No token, or another session's: refused, nothing forgotten.
    for data in ({"user_id": "u0002", "confirm": "u0002"},
                 {**forget, "csrf_token": "forged"}):  # fmt: skip
        response = admin.post("/customers/forget", data=data)
        assert response.status_code == 400 and "did not come from" in response.get_data(
            as_text=True
        )
    assert state.core.user_profile("u0002")["user_id"] == "u0002"
    unconfirmed = admin.post("/customers/forget", data={**forget, "csrf_token": token,
                                                          "confirm": "u000"})  # fmt: skip
    assert unconfirmed.status_code == 302
    assert state.core.user_profile("u0002")
    done = admin.post("/customers/forget", data={**forget, "csrf_token": token})
    assert done.status_code == 302
    with pytest.raises(NotFound):
        state.core.user_profile("u0002")
    created = admin.post("/campaigns", data={**spec, "name": "garden-any", "csrf_token": token})
    assert created.headers["Location"].endswith("/campaigns/garden-any")
    treated = state.core.campaign("garden-any").treatment
    assert "u0002" not in treated, "a forgotten customer is in no new campaign"
    # A member forgotten after the campaign was made leaves its export too.
    gone = treated[0]
    admin.post("/customers/forget", data={"user_id": gone, "confirm": gone, "csrf_token": token})
    exported = admin.get("/campaigns/garden-any/treatment.csv")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [r["user_id"] for r in rows] == treated[1:]


def test_no_customer_data_in_the_logs(state: ConsoleState, caplog) -> None:
    client = _client(state)
    _sign_in(client, "analyst-key")
    with caplog.at_level(logging.DEBUG):
        assert client.get("/customers?user_id=u0001").status_code == 200
        assert client.get("/customers?user_id=u0003&category=garden").status_code == 200
    assert any("GET /customers 200" in r.getMessage() for r in caplog.records)
    assert not any("u000" in r.getMessage() for r in caplog.records)


def test_without_keys_only_loopback(model_dir: Path) -> None:
    with pytest.raises(BadInput, match="only with API keys"):
        ConsoleServer.build(model_dir, ServingConfig(), ConsoleOptions(host="0.0.0.0", port=0))


# In a real browser.


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        skip_for_missing(
            "chromium",
            "chromium and chromedriver are not installed (apt-get install chromium "
            "chromium-driver; make test does as root)",
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1300,1000"):  # fmt: skip
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.implicitly_wait(5)  # find_element waits for the page, not a sleep
    yield session
    session.quit()


@pytest.fixture
def console(model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """`recsvc console` with keys, as an operator starts it; its printed address."""
    (tmp_path / "keys").write_text("".join(f"{k} {r}\n" for k, r in KEYS.items()))
    (tmp_path / "console.toml").write_text('[serving]\napi_keys_file = "keys"\n')
    process = subprocess.Popen(
        [RECSVC, "console", "--model-dir", str(model_dir), "--port", "0", "--config",
         str(tmp_path / "console.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    address = ""
    for line in process.stdout:
        if line.startswith("recsvc console: http"):
            address = line.split(": ", 1)[1].strip()
            break
    assert address, "the console printed no address"
    # Keep reading its output (the access log), so that a full pipe never blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    yield address
    process.terminate()
    process.wait(timeout=20)


def test_an_operator_in_a_browser(browser, console: str, tmp_path: Path) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shows
    from selenium.webdriver.support.ui import WebDriverWait

    def navigate(action) -> None:
        """Runs `action` (a click or a form post) and waits until the page it opens has loaded.

        Elements are looked up only after that: one found while the old document is being torn
        down makes Chromium fail with "Node with given id does not belong to the document".
        """
        old = browser.find_element(By.TAG_NAME, "html")
        action()
        replaced = shows.staleness_of(old)
        WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda b: replaced(b) and b.execute_script("return document.readyState") == "complete"
        )

    def main_text() -> str:
        return browser.find_element(By.TAG_NAME, "main").text

    def heading() -> str:
        return browser.find_element(By.TAG_NAME, "h1").text

    def click(how: str, what: str) -> None:
        target = browser.find_element(how, what)
        navigate(target.click)

    def post(fields: list[list[str]]) -> None:
        """A form posted to forget u0001 by a script, as another site's page would."""
        script = (
            "const f = document.createElement('form'); f.method = 'post';"
            "f.action = '/customers/forget';"
            "for (const [k, v] of arguments[0]) {"
            " const i = document.createElement('input'); i.name = k; i.value = v;"
            " f.appendChild(i); }"
            "document.body.appendChild(f); f.submit();"
        )
        navigate(lambda: browser.execute_script(script, fields))

    def sign_in(key: str) -> None:
        browser.get(console)
        assert "/sign-in" in browser.current_url
        browser.find_element(By.NAME, "key").send_keys(key)
        click(By.CSS_SELECTOR, "form button[type=submit]")
        assert heading() == "Overview"

    sign_in("admin-key")
    # Every page, through the navigation bar.
    for name, title in (("Customers", "Customers"), ("Items", "Items"),
                        ("Segments", "Segments and lifecycle"),
                        ("Campaigns", "Audiences and campaigns"), ("Experiments", "Experiments"),
                        ("Models", "Models"), ("Overview", "Overview")):  # fmt: skip
        click(By.LINK_TEXT, name)
        assert heading() == title
    # A customer looked up through the form: their profile and what recsvc would recommend.
    click(By.LINK_TEXT, "Customers")
    browser.find_element(By.NAME, "user_id").send_keys("u0001")
    click(By.CSS_SELECTOR, "form.inline button")
    assert "Recommend now" in main_text() and "LIFECYCLE STAGE" in main_text()
    first = browser.find_elements(By.CSS_SELECTOR, ".card.item a")[0].text
    assert re.fullmatch(r"i\d{4}", first)
    # Drill from a segment into a member.
    click(By.LINK_TEXT, "Segments")
    assert heading() == "Segments and lifecycle"
    click(By.PARTIAL_LINK_TEXT, "cluster:")
    assert "members now" in main_text()
    # A campaign: preview, create, read its report, export the treatment list.
    click(By.LINK_TEXT, "Campaigns")
    assert heading() == "Audiences and campaigns"
    for field, value in (("name", "browser-garden"), ("category", "garden"), ("size", "300"),
                         ("offer_category", "garden")):  # fmt: skip
        browser.find_element(By.NAME, field).send_keys(value)
    click(By.XPATH, "//button[text()='Preview the audience']")
    assert "Preview: 300 members" in main_text() and "300 to reach" not in main_text()
    click(By.XPATH, "//button[text()='Create the campaign']")
    assert "CONVERSION UPLIFT" in main_text() and "revenue per member" in main_text().lower()
    assert heading() == "Campaign browser-garden"
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "treatment list").get_attribute("href")
    cookie = browser.get_cookie("recsvc_console")
    request = urllib.request.Request(link, headers={"Cookie": f"recsvc_console={cookie['value']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert 200 <= len(rows) < 300 and rows[0]["rank"] == "1"
    # A form posted from elsewhere (no token) is refused, and the page says why.
    post([["user_id", "u0001"], ["confirm", "u0001"]])
    assert "did not come from this console" in main_text()
    # An analyst reads but does not change: no forget or rollback button, and the POST itself,
    # with a valid token, is refused.
    browser.get(console)
    click(By.XPATH, "//button[text()='Sign out']")
    assert "/sign-in" in browser.current_url
    sign_in("analyst-key")
    browser.get(f"{console}customers?user_id=u0001")
    assert "Recommend now" in main_text()
    assert not browser.find_elements(By.XPATH, "//button[text()='Forget this customer']")
    browser.get(f"{console}models")
    assert heading() == "Models"
    assert not browser.find_elements(By.XPATH, "//button[text()='Roll back to this']")
    token = browser.find_element(By.NAME, "csrf_token").get_attribute("value")
    post([["user_id", "u0001"], ["confirm", "u0001"], ["csrf_token", token]])
    assert "403" in main_text() and "needs an admin key" in main_text()


def test_the_overview_reads_a_running_servers_metrics(state: ConsoleState, model_dir: Path) -> None:
    from grpc_health.v1 import health_pb2
    from test_server_e2e import start_server

    from recsvc.v1 import recommender_pb2 as pb

    server = start_server(model_dir, "--metrics-port", "0")
    try:
        server.wait_for_health(health_pb2.HealthCheckResponse.SERVING)
        for _ in range(3):
            server.stub.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=5)
        line = next(line for line in server.output if "metrics on " in line)
        url = line.split("metrics on ", 1)[1].strip()
        client = create_app(state, None, metrics_url=url).test_client()
        page = client.get("/").get_data(as_text=True)
        calls = re.search(r"<td>Recommend</td><td class=\"num\">(\d+)</td>", page)
        assert calls and int(calls.group(1)) >= 3, page
    finally:
        server.stop()
    gone = create_app(state, None, metrics_url=url).test_client().get("/")
    assert "not reachable" in gone.get_data(as_text=True), "a stopped server is said, not an error"


def test_an_event_store_outage_is_a_clear_503_page(state: ConsoleState, monkeypatch) -> None:
    from recsvc.errors import StoreUnavailable

    client = _client(state)
    token = _sign_in(client, "admin-key")

    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("event store redis at 127.0.0.1:6379: connection refused.")

    assert state.store is not None
    monkeypatch.setattr(state.store, "campaigns", down)
    page = client.get("/campaigns")
    assert page.status_code == 503 and "connection refused" in page.get_data(as_text=True)
    spec = {"name": "x", "category": "garden", "conversion": "any", "csrf_token": token}
    created = client.post("/campaigns", data=spec)
    assert created.status_code == 503
    assert client.get("/customers?user_id=u0001").status_code == 200, "pages without the store"


def test_an_admin_rolls_back_and_the_console_follows(state: ConsoleState, model_dir: Path) -> None:
    first = state.models.current_version()
    assert first is not None
    source = state.models.path(first)
    second = state.models.publish(lambda d: shutil.copytree(source, d, dirs_exist_ok=True), "copy")
    state.follow_current(now_please=True)  # what each page does every RELOAD_CHECK_S
    assert state.core.version == second
    client = _client(state)
    token = _sign_in(client, "admin-key")
    listed = client.get("/models").get_data(as_text=True)
    assert listed.count("Roll back to this") == 1, "only the version not in service"
    unconfirmed = client.post("/models/rollback", data={"version": first, "csrf_token": token})
    assert unconfirmed.status_code == 302 and state.models.current_version() == second
    done = client.post(
        "/models/rollback", data={"version": first, "confirm": "yes", "csrf_token": token}
    )
    assert done.status_code == 302
    assert state.models.current_version() == first and state.core.version == first
    assert (
        client.post(
            "/models/rollback", data={"version": "no-such", "confirm": "yes", "csrf_token": token}
        ).status_code
        == 404
    )
