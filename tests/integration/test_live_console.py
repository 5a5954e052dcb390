"""The web console (docs/console.md) in a real headless Chromium against a real gunicorn.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver):
without them these tests skip, or fail when CI is set (.ci/run installs them). Selenium is
pointed at both binaries, so selenium-manager never downloads anything. Every test leaves a
screenshot in TEST_ARTIFACTS_DIR (default: test-artifacts/ at the repository root).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import pytest
from cluster import RedisServer, unavailable
from harness import PASSWORD, REPO_ROOT, create_topic, http, register, unique, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 15.0  # seconds for anything the page does on its own
RECONNECT_WAIT = 40.0  # a restart plus the console's capped backoff (at most 10 s a try)

HOSTILE_TEXT = '<img src=x onerror="window.__pwned=1">'
HOSTILE_ID = "<img src=y onerror=window.__pwned=2>"


def artifacts_dir() -> Path:
    """Where screenshots go: TEST_ARTIFACTS_DIR, else test-artifacts/ (git-ignored)."""
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO_ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, driven through Debian's chromedriver."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        unavailable(f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -r requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1100",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The console page of one gateway, read and driven through its data-testid controls."""

    def __init__(self, driver, server):
        self.driver = driver
        self.server = server

    def open(self) -> Console:
        self.driver.get(self.server.url + "/console")
        self.driver.execute_script("sessionStorage.clear()")  # no session left by a test before
        self.driver.get(self.server.url + "/console")
        self.wait(lambda: self.element("login-username").is_displayed(), what="the login form")
        return self

    # -- controls
    def element(self, testid: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def fill(self, testid: str, text: str) -> None:
        field = self.element(testid)
        field.clear()
        field.send_keys(text)

    def click(self, testid: str) -> None:
        self.element(testid).click()

    def click_in_row(self, list_testid: str, key: str, value: str, testid: str) -> None:
        """Click a button of a list row (in one script: the list re-renders as it polls)."""
        clicked = self.driver.execute_script(
            """const [list, key, value, testid] = arguments;
            const row = [...document.querySelectorAll(`[data-testid="${list}"] > li`)]
              .find((li) => li.getAttribute(key) === value);
            const button = row && row.querySelector(`[data-testid="${testid}"]`);
            if (button) button.click();
            return Boolean(button);""",
            list_testid,
            key,
            value,
            testid,
        )
        assert clicked, f"no {testid} button in the {list_testid} row {key}={value}"

    def text(self, testid: str) -> str:
        return self.element(testid).text

    def visible(self, testid: str) -> bool:
        return self.element(testid).is_displayed()

    def wait(self, predicate, timeout: float = WAIT, what: str = "the page"):
        return wait_until(predicate, timeout, interval=0.1, what=what)

    # -- what the page shows
    def connection(self) -> str:
        return self.element("connection-state").get_attribute("data-state")

    def events(self, topic: str) -> list[dict]:
        """The event log's entries of `topic`, in page order: seq, epoch, id, payload (parsed)."""
        rows = self.driver.execute_script(
            """return [...document.querySelectorAll('[data-testid="event-log"] > [data-seq]')]
              .filter((li) => li.dataset.topic === arguments[0])
              .map((li) => ({seq: Number(li.dataset.seq), epoch: li.dataset.epoch,
                             id: li.querySelector(".msg-id").textContent,
                             payload: li.querySelector("pre").textContent}));""",
            topic,
        )
        return [{**row, "payload": json.loads(row["payload"])} for row in rows]

    def seqs(self, topic: str) -> list[int]:
        return [row["seq"] for row in self.events(topic)]

    def notices(self) -> list[str]:
        return self.driver.execute_script(
            """return [...document.querySelectorAll('[data-testid="notices"] > li')]
              .map((li) => li.textContent);"""
        )

    def row(self, list_testid: str, key: str, value: str) -> dict | None:
        """One row of a list as {attribute: value} plus its text, or None."""
        return self.driver.execute_script(
            """const [list, key, value] = arguments;
            const row = [...document.querySelectorAll(`[data-testid="${list}"] > li`)]
              .find((li) => li.getAttribute(key) === value);
            if (!row) return null;
            const found = {text: row.textContent};
            for (const a of row.attributes) found[a.name] = a.value;
            return found;""",
            list_testid,
            key,
            value,
        )

    def csp_violations(self) -> list[str]:
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
        ]

    # -- flows
    def log_in(self, username: str, password: str = PASSWORD) -> None:
        self.fill("login-username", username)
        self.fill("login-password", password)
        self.click("login-submit")
        self.wait(lambda: self.visible("workspace"), what="the console after logging in")
        self.wait(lambda: self.connection() == "connected", what="the WebSocket to connect")

    def subscribe(self, topic: str, last_n: int = 0) -> None:
        self.fill("topic-name", topic)
        self.fill("subscribe-last-n", str(last_n))
        self.click("subscribe-submit")
        self.wait(
            lambda: (
                (self.row("subscriptions", "data-topic", topic) or {}).get("data-state")
                == "subscribed"
            ),
            what=f"the subscription to {topic}",
        )

    def publish(self, payload_text: str) -> None:
        self.fill("publish-payload", payload_text)
        self.click("publish-submit")


@pytest.fixture
def open_console(browser, request):
    """open_console(server) -> a logged-out Console; a screenshot is kept after the test."""

    def open_on(server) -> Console:
        return Console(browser, server).open()

    yield open_on
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    browser.save_screenshot(str(artifacts_dir() / f"{name}.png"))


def login_token(server, username: str) -> str:
    status, body = http(
        "POST", server.url + "/users/login", {"username": username, "password": PASSWORD}
    )
    assert status == 200, (status, body)
    return body["token"]


def publish_http(server, token: str, topic: str, payload, msg_id: str | None = None) -> int:
    body = {"payload": payload} if msg_id is None else {"id": msg_id, "payload": payload}
    status, answer = http("POST", f"{server.url}/topics/{topic}/messages", body, token=token)
    assert status == 201, (status, answer)
    return answer["seq"]


@pytest.fixture
def two_gateways(server_factory, tmp_path):
    """Gateways A and B on one Redis, one accounts database and one JWT secret."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = RedisServer(redis_dir).start()
    env = {
        "BROKER_URL": redis.url,
        "JWT_SECRET_KEY": secrets.token_hex(32),
        "DATABASE_URL": str(tmp_path / "users.db"),
    }
    gateways = []
    try:
        gateways += [server_factory(env=env), server_factory(env=env)]
        yield gateways
    finally:
        for gateway in gateways:  # before Redis, so that they stop as they would in production
            gateway.close()
        redis.stop()


def test_the_console_follows_a_topic_across_gateway_restarts(two_gateways, open_console):
    a, b = two_gateways
    username = unique("console")
    token = register(a, username)
    console = open_console(a)
    console.log_in(username)

    topic = unique("orders")
    console.fill("create-name", topic)
    console.click("create-submit")
    console.wait(lambda: console.row("topic-list", "data-topic", topic), what="the new topic")
    assert "Created" in console.text("create-result")
    console.subscribe(topic)  # create put the name in the topic field; subscribe with last_n=0
    # Live subscriber counts: the polled list catches up with our subscription.
    console.wait(
        lambda: console.row("topic-list", "data-topic", topic)["data-subscribers"] == "1",
        what="the topic list to count our subscription",
    )

    console.publish('{"n": 1, "from": "page"}')
    console.wait(lambda: console.seqs(topic) == [1], what="the page's own publish")
    # The event may arrive on the WebSocket before the HTTP answer the result line shows.
    console.wait(lambda: "seq 1" in console.text("publish-result"), what="the publish result")
    publish_http(a, token, topic, {"n": 2, "from": "api"})
    console.wait(lambda: console.seqs(topic) == [1, 2], what="a publish over HTTP")

    # Restart A; meanwhile the topic goes on through B (the same Redis): nothing is lost.
    assert a.stop() == 0
    console.wait(lambda: console.connection() == "reconnecting", what="the console to notice")
    assert [publish_http(b, token, topic, {"n": n, "from": "b"}) for n in (3, 4, 5)] == [3, 4, 5]
    a.start()
    console.wait(lambda: console.connection() == "connected", RECONNECT_WAIT, "reconnection")
    console.wait(lambda: console.seqs(topic) == [1, 2, 3, 4, 5], what="the missed events")
    publish_http(a, token, topic, {"n": 6, "from": "api"})
    console.wait(lambda: len(console.seqs(topic)) == 6, what="a live event after the resume")
    events = console.events(topic)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]  # in order, no duplicate
    assert [e["payload"]["n"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert len({e["epoch"] for e in events}) == 1
    assert any("nothing lost" in n for n in console.notices())
    assert not any("not everything was recovered" in n for n in console.notices())
    console.driver.save_screenshot(str(artifacts_dir() / "console-resume.png"))

    # Restart A again; through B the topic is deleted and created anew (a new epoch): the
    # console cannot recover what it missed, says so, and shows the new stream.
    assert a.stop() == 0
    console.wait(lambda: console.connection() == "reconnecting", what="the console to notice")
    assert http("DELETE", f"{b.url}/topics/{topic}", token=token)[0] == 200
    create_topic(b, token, topic)
    assert [publish_http(b, token, topic, {"n": n, "epoch": "new"}) for n in (1, 2)] == [1, 2]
    a.start()
    console.wait(lambda: console.connection() == "connected", RECONNECT_WAIT, "reconnection")
    console.wait(lambda: len(console.seqs(topic)) == 8, what="the new epoch's events")
    events = console.events(topic)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 1, 2]
    assert [e["payload"].get("epoch") for e in events[6:]] == ["new", "new"]
    assert events[6]["epoch"] != events[0]["epoch"]
    assert any("not everything was recovered" in n for n in console.notices())
    assert console.driver.find_elements(
        "css selector", '[data-testid="event-log"] > li.marker[data-notice="warning"]'
    ), "the gap is marked in the event log"

    # A deleted topic is shown and unsubscribed.
    assert http("DELETE", f"{a.url}/topics/{topic}", token=token)[0] == 200
    console.wait(
        lambda: any(f"Topic {topic} was deleted" in n for n in console.notices()),
        what="the topic_deleted notice",
    )
    console.wait(
        lambda: console.row("subscriptions", "data-topic", topic) is None,
        what="the deleted topic gone from the subscriptions",
    )
    assert console.csp_violations() == []


def test_invalid_json_is_not_sent_and_hostile_payloads_stay_text(gw, open_console):
    console = open_console(gw)
    username = unique("console")
    console.fill("login-username", username)
    console.fill("login-password", PASSWORD)
    console.click("register-submit")
    console.wait(lambda: console.connection() == "connected", what="registering through the form")
    topic = unique("hostile")
    console.fill("create-name", topic)
    console.click("create-submit")
    console.wait(lambda: console.row("topic-list", "data-topic", topic), what="the new topic")
    console.subscribe(topic, last_n=10)

    console.publish('{"half": ')
    console.wait(lambda: console.visible("publish-error"), what="the JSON error")
    assert "Invalid JSON" in console.text("publish-error")
    assert "Not sent" in console.text("publish-result")
    assert console.element("publish-payload").get_attribute("aria-invalid") == "true"
    console.publish('"fine"')
    console.wait(lambda: console.seqs(topic) == [1], what="the valid publish")
    assert not console.visible("publish-error")
    status, stats = http("GET", gw.url + "/stats")
    assert stats["topics"][topic]["messages"] == 1  # the invalid one never left the page

    token = login_token(gw, username)
    publish_http(gw, token, topic, HOSTILE_TEXT, msg_id=HOSTILE_ID)
    publish_http(gw, token, topic, {"<b>key</b>": "<script>window.__pwned=3</script>"})
    console.wait(lambda: console.seqs(topic) == [1, 2, 3], what="the hostile payloads")
    events = console.events(topic)
    assert events[1]["payload"] == HOSTILE_TEXT and events[1]["id"] == HOSTILE_ID
    assert events[2]["payload"] == {"<b>key</b>": "<script>window.__pwned=3</script>"}
    injected = console.driver.find_elements(
        "css selector",
        '[data-testid="event-log"] img, [data-testid="event-log"] script, '
        '[data-testid="event-log"] b',
    )
    assert injected == []
    assert console.driver.execute_script("return window.__pwned") is None
    assert console.csp_violations() == []


def test_a_reload_keeps_the_session_and_a_refused_token_logs_out(gw, open_console):
    username = unique("console")
    register(gw, username)
    console = open_console(gw)
    console.log_in(username)
    console.driver.refresh()  # sessionStorage: the tab stays logged in
    console.wait(lambda: console.connection() == "connected", what="the restored session")
    assert console.text("whoami-name") == username
    console.click("logout")
    assert console.visible("login-panel") and console.connection() == "disconnected"
    assert console.driver.execute_script("return sessionStorage.length") == 0

    forged = {"token": "not.a.token", "user": {"username": username, "role": "user"}}
    console.driver.execute_script(
        "sessionStorage.setItem('gateway-console', arguments[0])", json.dumps(forged)
    )
    console.driver.refresh()
    console.wait(lambda: console.visible("login-error"), what="the refused token")
    assert "log in again" in console.text("login-error")
    assert console.connection() == "disconnected"


def test_members_are_managed_and_a_revoked_member_is_told(gw, open_console):
    from selenium.webdriver.support.select import Select

    username, carol = unique("console"), unique("carol")
    register(gw, username)
    register(gw, carol)
    alice = register(gw)
    console = open_console(gw)
    console.log_in(username)

    # The console user creates a members-only topic and manages its members.
    mine = unique("private")
    console.fill("create-name", mine)
    Select(console.element("create-publish")).select_by_value("members")
    Select(console.element("create-subscribe")).select_by_value("members")
    console.click("create-submit")
    console.wait(lambda: console.row("topic-list", "data-topic", mine), what="the new topic")
    assert "subscribe: members" in console.row("topic-list", "data-topic", mine)["text"]
    console.click_in_row("topic-list", "data-topic", mine, "topic-members")
    console.wait(lambda: console.row("members-list", "data-member", username), what="members")
    console.fill("member-username", carol)
    console.click("member-add")
    console.wait(lambda: console.row("members-list", "data-member", carol), what="carol added")
    console.click_in_row("members-list", "data-member", carol, "member-remove")
    console.wait(
        lambda: console.row("members-list", "data-member", carol) is None, what="carol removed"
    )
    status, body = http("GET", f"{gw.url}/topics/{mine}/members", token=alice)
    assert status == 403  # alice is no member: the page showed what the API holds
    console.driver.execute_script("window.confirm = () => true")  # the delete button asks
    console.click_in_row("topic-list", "data-topic", mine, "topic-delete")
    console.wait(lambda: console.row("topic-list", "data-topic", mine) is None, what="deletion")

    # Alice's members-only topic: the console user is a member, subscribes, is removed.
    theirs = unique("plans")
    status, _ = http(
        "POST",
        gw.url + "/topics",
        {"name": theirs, "publish": "members", "subscribe": "members"},
        token=alice,
    )
    assert status == 201
    assert http("PUT", f"{gw.url}/topics/{theirs}/members/{username}", token=alice)[0] == 200
    console.subscribe(theirs)
    publish_http(gw, alice, theirs, "for members")
    console.wait(lambda: console.seqs(theirs) == [1], what="an event of alice's topic")
    assert http("DELETE", f"{gw.url}/topics/{theirs}/members/{username}", token=alice)[0] == 200
    console.wait(
        lambda: any(f"access to {theirs} was revoked" in n for n in console.notices()),
        what="the access_revoked notice",
    )
    # The list is redrawn on the next animation frame, after the notice is shown.
    console.wait(
        lambda: console.row("subscriptions", "data-topic", theirs) is None,
        what="the revoked subscription gone from the list",
    )
    assert console.csp_violations() == []


def test_a_restarted_memory_gateway_has_forgotten_the_topic(server_factory, open_console):
    srv = server_factory()  # the memory broker: topics and history live as long as the process
    username = unique("console")
    token = register(srv, username)
    topic = create_topic(srv, token)
    console = open_console(srv)
    console.log_in(username)
    console.subscribe(topic)
    publish_http(srv, token, topic, "before the restart")
    console.wait(lambda: console.seqs(topic) == [1], what="the first event")
    assert srv.stop() == 0
    console.wait(lambda: console.connection() == "reconnecting", what="the console to notice")
    srv.start()
    console.wait(lambda: console.connection() == "connected", RECONNECT_WAIT, "reconnection")
    console.wait(
        lambda: any(f"{topic} no longer exists" in n for n in console.notices()),
        what="the notice that the topic is gone",
    )
    console.wait(
        lambda: console.row("subscriptions", "data-topic", topic) is None,
        what="the forgotten topic gone from the subscriptions",
    )
    assert console.seqs(topic) == [1]


def test_the_console_says_when_the_gateway_refuses_its_origin(server_factory, open_console):
    srv = server_factory(env={"ALLOWED_CORS_ORIGIN": "https://elsewhere.example"})
    username = unique("console")
    register(srv, username)
    console = open_console(srv)
    console.wait(lambda: console.visible("origin-warning"), what="the origin warning")
    warning = console.text("origin-warning")
    assert "ALLOWED_CORS_ORIGIN" in warning and srv.url in warning
    # Logging in still works (same-origin HTTP); the page does not knock on /ws in vain.
    console.fill("login-username", username)
    console.fill("login-password", PASSWORD)
    console.click("login-submit")
    console.wait(lambda: console.visible("workspace"), what="the console after logging in")
    assert console.connection() == "disconnected"
    assert "origin" in console.text("connection-detail")
    assert "ws_rejected" not in srv.log_text()
