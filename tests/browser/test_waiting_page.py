"""The waiting page in a real browser: headless Chromium, driven over
WebDriver, against a real waitroom process (Redis store, its own
redis-server) and the reference BFF (examples/bff).

The binaries are the debug ones scripts/test.sh builds (target/debug). Screenshots
of the waiting and booking pages are saved in target/browser/."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
SHOTS = TARGET.parent / "browser"
COOKIE_KEY = "5e" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, limit: float = 20.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


class Process:
    def __init__(self, args, log: pathlib.Path):
        self.log = log
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def scratch():
    path = pathlib.Path(tempfile.mkdtemp(prefix="waitroom-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def waitroom(scratch):
    redis_port = free_port()
    redis = Process(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(scratch)],
        scratch / "redis.log",
    )
    wait_for_port(redis_port)
    grpc, http_port = free_port(), free_port()
    service = Process(
        [str(TARGET / "waitroom"), "--listen", f"127.0.0.1:{grpc}", "--http-listen", f"127.0.0.1:{http_port}",
         "--redis-url", f"redis://127.0.0.1:{redis_port}", "--redis-prefix", "browser",
         "--watch-interval", "100ms", "--drain-delay", "0s", "--shutdown-timeout", "1s"],
        scratch / "waitroom.log",
    )
    wait_for_port(grpc)
    wait_for_port(http_port)
    yield {
        "addr": f"http://127.0.0.1:{grpc}",
        "jwks": f"http://127.0.0.1:{http_port}/.well-known/jwks.json",
        "metrics": f"http://127.0.0.1:{http_port}/metrics",
    }
    service.stop()
    redis.stop()


def ctl(waitroom, *args: str) -> str:
    done = subprocess.run(
        [str(TARGET / "waitroomctl"), "--addr", waitroom["addr"], *args],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_queues = iter(range(1, 1_000_000))


def new_queue(waitroom, *flags: str) -> str:
    queue = f"sale-{os.getpid()}-{next(_queues)}"
    ctl(waitroom, "queue", "create", queue, "--heartbeat-timeout", "2m", *flags)
    return queue


class Bff:
    def __init__(self, waitroom, queue: str, scratch: pathlib.Path, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            str(TARGET / "examples" / "bff"), "--waitroom", waitroom["addr"], "--jwks-url", waitroom["jwks"],
            "--queue", queue, "--listen", f"127.0.0.1:{self.port}", "--cookie-key", COOKIE_KEY,
            "--title", "Concert tickets", *extra,
        ]
        self.log = scratch / f"bff-{self.port}.log"
        self.start()

    def start(self):
        self.process = Process(self.args, self.log)
        wait_for_port(self.port)

    def restart(self):
        self.process.stop()
        self.start()

    def stop(self):
        self.process.stop()


@pytest.fixture
def bff_of(waitroom, scratch):
    started = []

    def start(queue: str, *extra: str) -> Bff:
        bff = Bff(waitroom, queue, scratch, *extra)
        started.append(bff)
        return bff

    yield start
    for bff in started:
        bff.stop()


def new_browser(width=1280, height=900, block_event_source=False):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    service = ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    if block_event_source:
        # As a browser or a proxy without Server-Sent Events would: the
        # page must fall back to polling.
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": "delete window.EventSource;"}
        )
    return driver


@pytest.fixture
def browser():
    drivers = []

    def make(**kwargs):
        driver = new_browser(**kwargs)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.quit()


def body(driver, key: str) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute(f"data-{key}")


def until(driver, check, timeout=20.0, what="condition"):
    # A check may read the page while it is being replaced (the challenge, a
    # reload, the move to /booking); that read is retried, not a failure.
    waiting = WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )
    return waiting.until(lambda d: check(d), message=what)


def position(driver) -> int:
    return int(driver.find_element(By.ID, "position").text.replace(",", ""))


def join_others(waitroom, queue: str, count: int):
    for n in range(count):
        ctl(waitroom, "enqueue", queue, f"other-{n}")


def shoot(driver, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def test_a_visitor_watches_the_line_move_and_buys_once_on_the_booking_page(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 4)
    bff = bff_of(queue)
    driver = browser(width=390, height=844)
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting", what="the waiting page")
    assert position(driver) == 5
    assert driver.find_element(By.ID, "ahead").text == "4"
    assert "refreshing this page keeps your place" in driver.page_source.lower()
    live = driver.find_element(By.ID, "status")
    announced = driver.find_element(By.ID, "announce")
    assert announced.get_attribute("aria-live") == "polite"
    until(driver, lambda d: body(d, "transport") == "events", what="events")
    ctl(waitroom, "admit", queue, "2")
    until(driver, lambda d: position(d) == 3, what="the position to fall to 3")
    assert "You are number 3 in line." in live.text
    assert announced.get_attribute("textContent") == "You are number 3 in line."
    assert "Last updated" in driver.find_element(By.ID, "updated").text
    assert int(driver.find_element(By.ID, "progress").get_attribute("value")) == 50
    shoot(driver, "waiting-page.png")
    # The notification was offered, not asked for; granted, it comes when
    # it is the visitor's turn (a stand-in records it across the move to
    # the booking page).
    assert driver.find_element(By.ID, "notify").is_displayed()
    driver.execute_script("""
        window.Notification = function (title) { sessionStorage.setItem('notified', title); };
        window.Notification.permission = 'granted';
    """)
    ctl(waitroom, "admit", queue, "3")
    until(driver, lambda d: d.current_url.endswith("/booking"), what="the booking page")
    assert "It's your turn" in driver.page_source
    # A tab in the background shows it in its title too.
    assert driver.title.startswith("It's your turn"), driver.title
    assert driver.execute_script("return sessionStorage.getItem('notified')") == "It's your turn"
    # The token travelled in a cookie, never in the URL.
    assert "eyJ" not in driver.current_url
    token = driver.get_cookie("wr_admission")
    assert token and token["httpOnly"]
    shoot(driver, "booking-page.png")
    driver.find_element(By.ID, "buy").click()
    until(driver, lambda d: "Purchase complete" in d.page_source, what="the purchase")
    # Back on the booking page with the same admission: the purchase is
    # done, it is not the visitor's turn again.
    driver.add_cookie({"name": "wr_admission", "value": token["value"], "path": "/booking"})
    driver.get(bff.url + "/booking")
    until(driver, lambda d: "your purchase is done" in d.page_source, what="the purchase shown done")
    assert "It's your turn" not in driver.page_source
    assert driver.find_element(By.ID, "heading").text == "Purchase complete"
    assert driver.title.startswith("Purchase complete"), driver.title
    assert not driver.find_elements(By.ID, "buy")
    # The same admission sent again in a new attempt is refused.
    visitor = driver.get_cookie("wr_visitor")["value"]
    again = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    again.request("POST", "/booking/purchase", body="attempt=another", headers={
        "Cookie": f"wr_visitor={visitor}; wr_admission={token['value']}",
        "Content-Type": "application/x-www-form-urlencoded",
    })
    answer = again.getresponse()
    assert answer.status == 409 and "already been used" in answer.read().decode()


def test_a_refresh_and_a_second_tab_keep_the_same_place(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 2)
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    ticket = body(driver, "ticket")
    assert position(driver) == 3
    driver.refresh()
    until(driver, lambda d: body(d, "state") == "waiting")
    assert body(driver, "ticket") == ticket and position(driver) == 3
    driver.switch_to.new_window("tab")
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    assert body(driver, "ticket") == ticket and position(driver) == 3
    # The BFF restarted (same cookie key): still the same place.
    bff.restart()
    driver.refresh()
    until(driver, lambda d: body(d, "state") == "waiting")
    assert body(driver, "ticket") == ticket


def test_closing_the_queue_shows_sold_out_to_those_waiting_and_to_newcomers(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 1)
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    ctl(waitroom, "queue", "mode", queue, "closed")
    until(driver, lambda d: body(d, "state") == "closed", what="the sold-out state")
    assert driver.find_element(By.ID, "closed").is_displayed()
    assert "Sold out" in driver.find_element(By.ID, "status").text
    # The page's heading and next step are the closed state's, never the
    # waiting one's.
    assert driver.find_element(By.ID, "heading").text == "Sold out"
    assert "Keep this tab open" not in driver.find_element(By.ID, "hint").text
    newcomer = browser()
    newcomer.get(bff.url + "/")
    assert "Sold out" in newcomer.page_source
    assert newcomer.find_element(By.ID, "heading").text == "Sold out"
    assert "You are in line" not in newcomer.page_source


def test_each_state_has_its_own_heading_and_next_step(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 1)
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    heading = lambda d: d.find_element(By.ID, "heading").text
    assert heading(driver) == "You are in line"
    assert "Keep this tab open" in driver.find_element(By.ID, "hint").text
    ctl(waitroom, "queue", "mode", queue, "paused")
    until(driver, lambda d: heading(d) == "Admission is paused", what="the paused heading")
    assert driver.find_element(By.ID, "estimate").text == "when admission resumes"
    ctl(waitroom, "queue", "mode", queue, "queueing")
    until(driver, lambda d: heading(d) == "You are in line", what="the waiting heading again")
    # A message page (no admission) says so and leads back to the start.
    driver.get(bff.url + "/booking")
    assert "No admission" in driver.page_source
    driver.find_element(By.LINK_TEXT, "Back to the start").click()
    until(driver, lambda d: body(d, "state") == "waiting", what="back in line")


def test_the_live_region_speaks_at_every_tenth_place_not_at_every_step(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 25)
    driver = browser()
    driver.get(bff_of(queue).url + "/")
    until(driver, lambda d: position(d) == 26, what="the place")
    until(driver, lambda d: body(d, "transport") == "events", what="events")
    driver.execute_script("""
        window.__said = [];
        new MutationObserver(() => window.__said.push(document.getElementById('announce').textContent))
            .observe(document.getElementById('announce'), { childList: true, characterData: true, subtree: true });
    """)
    for expected in range(25, 19, -1):
        ctl(waitroom, "admit", queue, "1")
        until(driver, lambda d: position(d) == expected, what=f"place {expected}")
        assert driver.find_element(By.ID, "status").text == f"You are number {expected} in line."
    # Six steps shown; read out once, on crossing into the next ten.
    assert driver.execute_script("return window.__said") == ["Fewer than 20 people are ahead of you."]


def test_the_expected_entry_is_a_time_and_a_range_or_honest_words_without_a_rate(waitroom, bff_of, browser):
    # Admitted by hand: no rate, and the page says what moves the line.
    manual = new_queue(waitroom)
    join_others(waitroom, manual, 1)
    driver = browser()
    driver.get(bff_of(manual).url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    until(driver, lambda d: "organiser" in d.find_element(By.ID, "estimate").text, what="words without a rate")
    assert "calculating" not in driver.page_source
    # With a rate: a clock time, a range, and a figure that moves.
    timed = new_queue(waitroom, "--admit-per-second", "1", "--max-active", "1")
    join_others(waitroom, timed, 200)
    driver = browser()
    driver.get(bff_of(timed).url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    estimate = lambda d: d.find_element(By.ID, "estimate").text
    until(driver, lambda d: re.search(r"around \d", estimate(d)), what="an entry time")
    text = estimate(driver)
    assert "between" in text and "from now" in text, text
    print(f"expected entry shown: {text!r}")


def test_a_notice_and_a_cancellation_reach_the_page_as_they_happen(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 1)
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    assert not driver.find_element(By.ID, "notice").is_displayed()
    ctl(waitroom, "notice", queue, "Limit 4 tickets per person")
    until(
        driver,
        lambda d: d.find_element(By.ID, "notice").text == "Limit 4 tickets per person",
        what="the notice",
    )
    ctl(waitroom, "clear", queue, "--yes")
    until(driver, lambda d: body(d, "state") == "closed", what="the cancelled state")
    assert "cancelled" in driver.find_element(By.ID, "status").text
    assert driver.find_element(By.ID, "closed-title").text == "Cancelled"
    assert driver.find_element(By.ID, "heading").text == "Cancelled"
    assert "You are in line" not in driver.find_element(By.TAG_NAME, "main").text


def test_before_a_scheduled_opening_the_page_counts_down_then_shows_the_drawn_place(waitroom, bff_of, browser):
    opens = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=6)
    queue = new_queue(
        waitroom, "--opens-at", opens.strftime("%Y-%m-%dT%H:%M:%SZ"), "--prequeue-window", "1h"
    )
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "pre_queue", what="the pre-queue")
    assert driver.find_element(By.ID, "heading").text == "The sale opens soon"
    countdown = driver.find_element(By.ID, "countdown")
    assert re.fullmatch(r"0:00:0\d", countdown.text), countdown.text
    first = countdown.text
    until(driver, lambda d: countdown.text != first, timeout=5, what="the countdown to move")
    until(driver, lambda d: body(d, "state") == "waiting", timeout=30, what="the drawn place")
    assert position(driver) == 1
    assert int(body(driver, "ticket")) > 0


def test_with_server_sent_events_blocked_the_page_polls_and_still_moves(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 3)
    bff = bff_of(queue)
    driver = browser(block_event_source=True)
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "transport") == "polling", what="polling")
    assert position(driver) == 4
    ctl(waitroom, "admit", queue, "2")
    until(driver, lambda d: position(d) == 2, what="the position to fall by polling")


def test_the_booking_page_refuses_a_visitor_without_a_valid_admission(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    bff = bff_of(queue)
    connection = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    connection.request("GET", "/booking")
    assert connection.getresponse().status == 403
    driver = browser()
    driver.get(bff.url + "/wait")
    driver.add_cookie({"name": "wr_admission", "value": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "path": "/booking"})
    driver.get(bff.url + "/booking")
    assert "No admission" in driver.page_source
    assert not driver.find_elements(By.ID, "buy")


def test_a_tampered_visitor_cookie_gets_a_new_place_never_another_visitors(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    bff = bff_of(queue)
    first = browser()
    first.get(bff.url + "/")
    until(first, lambda d: body(d, "state") == "waiting")
    ticket = body(first, "ticket")
    cookie = first.get_cookie("wr_visitor")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    # The signed part is the id and the receipt of the last place shown.
    payload, tag = cookie["value"].rsplit(".", 1)
    visitor_id, _, receipt = payload.partition("~")
    assert receipt, "the cookie keeps the place's receipt"
    other = browser()
    other.get(bff.url + "/static/app.css")
    forged = visitor_id[:-1] + ("0" if visitor_id[-1] != "0" else "1")
    forgeries = (f"{forged}~{receipt}.{tag}", f"{forged}.{tag}", visitor_id, f"{payload}.{'0' * len(tag)}")
    for value in forgeries:
        other.delete_all_cookies()
        other.add_cookie({"name": "wr_visitor", "value": value, "path": "/"})
        other.get(bff.url + "/")
        until(other, lambda d: body(d, "state") == "waiting")
        assert body(other, "ticket") != ticket
    # The genuine cookie, copied, is the same visitor: the cookie is the
    # identity, which is why it is HttpOnly.
    other.delete_all_cookies()
    other.add_cookie({"name": "wr_visitor", "value": cookie["value"], "path": "/"})
    other.get(bff.url + "/")
    until(other, lambda d: body(d, "state") == "waiting")
    assert body(other, "ticket") == ticket


def test_the_page_works_without_javascript_by_refreshing_itself(waitroom, bff_of):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 2)
    bff = bff_of(queue)
    page = urllib.request.urlopen(bff.url + "/wait", timeout=10).read().decode()
    assert '<noscript><meta http-equiv="refresh" content="10"></noscript>' in page
    assert 'id="position" class="big">3<' in page


def test_joins_and_streams_per_address_are_limited_with_retry_after(waitroom, bff_of):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--joins-per-minute", "2", "--streams-per-client", "1")
    connection = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    cookie = None
    # Two new visitors from the address join; the third is told to wait,
    # on the page itself, which tries again by itself.
    for _ in range(2):
        connection.request("GET", "/wait")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
        cookie = cookie or answer.getheader("Set-Cookie").split(";")[0]
    connection.request("GET", "/wait")
    refused = connection.getresponse()
    page = refused.read().decode()
    assert refused.status == 429 and int(refused.getheader("Retry-After")) >= 1
    assert 'http-equiv="refresh"' in page and "tries again" in page
    # A known visitor's refreshes spend nothing: a storm of them keeps the
    # place.
    for _ in range(10):
        connection.request("GET", "/wait", headers={"Cookie": cookie})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
    first = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    first.request("GET", "/events", headers={"Cookie": cookie})
    assert first.getresponse().status == 200
    second = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    second.request("GET", "/events", headers={"Cookie": cookie})
    answer = second.getresponse()
    assert answer.status == 429 and answer.getheader("Retry-After")
    first.close()


def test_the_human_check_is_a_proof_of_work_the_page_solves_before_the_visitor_joins(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--human-check", "pow")
    # Without a pass the waiting page is the challenge, and nobody joins.
    answer, page = _read(bff, "GET", "/wait")
    assert answer.status == 200 and 'data-state="challenge"' in page
    stats = json.loads(ctl(waitroom, "--output", "json", "queue", "stats", queue))
    assert stats["waiting"] == 0 and stats["enqueued_total"] == 0
    # The page's script finds the answer and sends it: a pass, then a place.
    driver = browser()
    started = time.monotonic()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting", what="a place after the proof of work")
    print(f"proof of work (16 bits) solved and joined in {time.monotonic() - started:.2f} s")
    assert position(driver) == 1
    names = {c["name"] for c in driver.get_cookies()}
    assert "wr_human" in names, names


def test_with_the_human_check_on_new_visitors_still_spend_joins(waitroom, bff_of):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--human-check", "pow", "--joins-per-minute", "2")
    # Each new visitor is counted when first seen, challenge or not: a
    # script minting visitors to solve the check for is limited as any.
    for _ in range(2):
        answer, page = _read(bff, "GET", "/wait")
        assert answer.status == 200 and 'data-state="challenge"' in page
    answer, page = _read(bff, "GET", "/wait")
    assert answer.status == 429 and int(answer.getheader("Retry-After")) >= 1
    assert 'data-state="challenge"' not in page


def _visitor_cookie(answer) -> str:
    for name, value in answer.getheaders():
        if name.lower() == "set-cookie" and value.startswith("wr_visitor="):
            return value.split(";")[0]
    raise AssertionError("no visitor cookie set")


def _solve(page: str, bits: int) -> dict:
    challenge = re.search(r'name="challenge" value="([0-9a-f.]+)"', page).group(1)
    for n in itertools.count():
        digest = hashlib.sha256(f"{challenge}:{n}".encode()).digest()
        if int.from_bytes(digest, "big") >> (256 - bits) == 0:
            return {"challenge": challenge, "answer": str(n)}


def _read(bff, method: str, path: str, headers=None, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    return answer, text


def test_a_human_pass_made_by_hand_or_taken_from_another_visitor_does_not_join(waitroom, bff_of):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--human-check", "pow", "--pow-bits", "8")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # Twenty scripted visitors with a pass made by hand: twenty challenges.
    for _ in range(20):
        first, _page = _read(bff, "GET", "/wait")
        visitor = _visitor_cookie(first)
        answer, page = _read(bff, "GET", "/wait", {"Cookie": f"{visitor}; wr_human=passed"})
        assert answer.status == 200 and 'data-state="challenge"' in page
    # A wrong answer is refused with a fresh challenge.
    first, page = _read(bff, "GET", "/wait")
    alice = _visitor_cookie(first)
    solved = _solve(page, 8)
    wrong = next(str(n) for n in itertools.count()
                 if hashlib.sha256(f"{solved['challenge']}:{n}".encode()).digest()[0] != 0)
    body_wrong = urllib.parse.urlencode({"challenge": solved["challenge"], "answer": wrong})
    answer, page = _read(bff, "POST", "/human", {**form, "Cookie": alice}, body_wrong)
    assert answer.status == 403 and "did not succeed" in page
    # Alice's solved challenge gives Alice a pass.
    answer, _ = _read(bff, "POST", "/human", {**form, "Cookie": alice}, urllib.parse.urlencode(solved))
    assert answer.status == 303
    alice_pass = next(v.split(";")[0] for k, v in answer.getheaders()
                      if k.lower() == "set-cookie" and v.startswith("wr_human="))
    # Bob, with Alice's challenge answered or with Alice's pass, gets none.
    first, _ = _read(bff, "GET", "/wait")
    bob = _visitor_cookie(first)
    answer, _ = _read(bff, "POST", "/human", {**form, "Cookie": bob}, urllib.parse.urlencode(solved))
    assert answer.status == 403
    answer, page = _read(bff, "GET", "/wait", {"Cookie": f"{bob}; {alice_pass}"})
    assert 'data-state="challenge"' in page
    stats = json.loads(ctl(waitroom, "--output", "json", "queue", "stats", queue))
    assert stats["enqueued_total"] == 0, stats
    # Alice's pass is hers: she joins.
    answer, page = _read(bff, "GET", "/wait", {"Cookie": f"{alice}; {alice_pass}"})
    assert 'data-state="waiting"' in page, page
    stats = json.loads(ctl(waitroom, "--output", "json", "queue", "stats", queue))
    assert stats["enqueued_total"] == 1, stats


def test_the_page_fits_a_phone_and_follows_a_dark_theme(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 1)
    bff = bff_of(queue, "--accent", "#d9480f")
    driver = browser(width=360, height=740)
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    fits = driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert fits, "the page scrolls sideways on a phone"
    background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
    assert max(channels) < 64, background
    accent = driver.execute_script(
        "return getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()"
    )
    assert accent == "#d9480f"
    shoot(driver, "waiting-page-dark.png")


def open_streams(waitroom) -> int:
    """Streams open on the service now (read at each scrape)."""
    text = urllib.request.urlopen(waitroom["metrics"], timeout=10).read().decode()
    return int(re.search(r"^waitroom_open_watchers (\d+)", text, re.M).group(1))


def test_a_page_closed_ends_its_stream_on_the_service(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    bff = bff_of(queue)
    driver = browser()
    driver.get(bff.url + "/static/app.css")
    # Streams of earlier tests' pages have ended.
    until(driver, lambda d: open_streams(waitroom) == 0, what="no stream open before")
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "transport") == "events")
    until(driver, lambda d: open_streams(waitroom) == 1, what="the stream open on the service")
    # The visitor closes the tab. (Navigating away may keep the page, and
    # its connection, in the back-forward cache.)
    page = driver.current_window_handle
    driver.switch_to.new_window("tab")
    other = driver.current_window_handle
    driver.switch_to.window(page)
    driver.close()
    driver.switch_to.window(other)
    until(driver, lambda d: open_streams(waitroom) == 0, what="the stream ended on the service")


class Stack:
    """A waitroom of a test's own on a Redis of its own (no persistence),
    each of which the test may stop and start again on the same port."""

    def __init__(self, scratch: pathlib.Path, *flags: str):
        self.scratch = scratch / f"stack-{free_port()}"
        self.scratch.mkdir()
        self.redis_port, self.grpc, self.http = free_port(), free_port(), free_port()
        self.flags = flags
        self.addr = f"http://127.0.0.1:{self.grpc}"
        self.jwks = f"http://127.0.0.1:{self.http}/.well-known/jwks.json"
        # The signing key outlives a restart: receipts and tokens stay good.
        self.key = self.scratch / "signing.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(self.key)], check=True)
        self.start_redis()
        self.start_waitroom()

    def start_redis(self):
        self.redis = Process(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.scratch)],
            self.scratch / "redis.log",
        )
        wait_for_port(self.redis_port)

    def start_waitroom(self):
        self.waitroom = Process(
            [str(TARGET / "waitroom"), "--listen", f"127.0.0.1:{self.grpc}", "--http-listen",
             f"127.0.0.1:{self.http}", "--redis-url", f"redis://127.0.0.1:{self.redis_port}",
             "--signing-key", str(self.key), "--watch-interval", "100ms", "--drain-delay", "0s",
             "--shutdown-timeout", "1s", *self.flags],
            self.scratch / "waitroom.log",
        )
        wait_for_port(self.grpc)
        wait_for_port(self.http)
        # Ready, as a readiness probe would see it: its declared queue made.
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "waitroom never ready"
            time.sleep(0.1)

    def services(self):
        return {"addr": self.addr, "jwks": self.jwks}

    def stop(self):
        self.waitroom.stop()
        self.redis.stop()


def _page_second_in_line(stack: "Stack", queue: str, scratch, browser):
    """On a stack of its own (heartbeat 5 s), one person ahead and a page
    in line behind them, following its place over events."""
    ctl(stack.services(), "enqueue", queue, "early")
    bff = Bff(stack.services(), queue, scratch)
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "state") == "waiting")
    until(driver, lambda d: body(d, "transport") == "events")
    return bff, driver


def _kept_its_place(stack: "Stack", queue: str, driver, ticket: str):
    """After the fault: the line moves, the page is first with the same
    ticket and live again, and nobody was released."""
    ctl(stack.services(), "admit", queue, "1")
    until(driver, lambda d: position(d) == 1, timeout=30, what="the place kept, and moving again")
    assert body(driver, "ticket") == ticket
    assert body(driver, "connection") == "live"
    assert not driver.find_element(By.ID, "reconnecting").is_displayed()
    stats = json.loads(ctl(stack.services(), "--output", "json", "queue", "stats", queue))
    assert stats["abandoned_total"] == 0, stats


def test_a_page_open_through_a_15_s_waitroom_outage_keeps_its_place(scratch, browser):
    queue = "outage"
    stack = Stack(scratch, "--queue", f"{queue}:heartbeat_timeout=5s")
    try:
        bff, driver = _page_second_in_line(stack, queue, scratch, browser)
        ticket = body(driver, "ticket")
        assert position(driver) == 2
        # Three heartbeat timeouts without waitroom: the page cannot be
        # heard, and nobody counts that time against it.
        stack.waitroom.stop()
        stopped = time.monotonic()
        # The page says it is reconnecting within a few seconds, and when
        # the place was last confirmed.
        until(driver, lambda d: body(d, "connection") == "reconnecting", timeout=5,
              what="the reconnecting state")
        print(f"reconnecting shown {time.monotonic() - stopped:.1f} s after waitroom stopped")
        banner = driver.find_element(By.ID, "reconnecting")
        assert banner.is_displayed() and "You keep your place" in banner.text, banner.text
        assert "last confirmed at" in banner.text, banner.text
        time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))
        stack.start_waitroom()
        _kept_its_place(stack, queue, driver, ticket)
        bff.stop()
    finally:
        stack.stop()


def test_after_redis_comes_back_empty_three_visitors_who_reload_in_reverse_see_their_old_order(scratch, browser):
    queue = "empty"
    stack = Stack(scratch, "--queue", queue)
    try:
        bff = Bff(stack.services(), queue, scratch)
        drivers = []
        for n in range(3):
            driver = browser()
            driver.get(bff.url + "/")
            until(driver, lambda d: body(d, "state") == "waiting")
            until(driver, lambda d: body(d, "transport") == "events")
            assert position(driver) == n + 1
            drivers.append(driver)
        tickets = [body(d, "ticket") for d in drivers]
        time.sleep(0.5)
        stack.redis.stop()
        time.sleep(1)
        stack.start_redis()
        # The declared queue is made again as soon as Redis answers.
        until(drivers[0], lambda d: subprocess.run(
            [str(TARGET / "waitroomctl"), "--addr", stack.addr, "queue", "get", queue],
            capture_output=True, timeout=30).returncode == 0, what="the queue re-made")
        for driver in reversed(drivers):
            driver.refresh()
            until(driver, lambda d: body(d, "state") == "waiting", what="the place back")
        for n, driver in enumerate(drivers):
            driver.refresh()
            until(driver, lambda d: body(d, "state") == "waiting")
            assert body(driver, "ticket") == tickets[n]
            assert position(driver) == n + 1
        bff.stop()
    finally:
        stack.stop()


def _get(bff, method: str, path: str, headers=None, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer


def test_every_route_sends_protective_headers_and_the_page_runs_under_its_policy(waitroom, bff_of, browser):
    queue = new_queue(waitroom)
    bff = bff_of(queue)
    for path in ("/", "/wait", "/status", "/booking", "/admit", "/static/app.js", "/static/app.css", "/nope"):
        answer = _get(bff, "GET", path)
        csp = answer.getheader("Content-Security-Policy") or ""
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
        assert "unsafe-inline" not in csp, (path, csp)
        assert answer.getheader("X-Frame-Options") == "DENY", path
        assert answer.getheader("X-Content-Type-Options") == "nosniff", path
        if not path.startswith("/static/"):
            assert answer.getheader("Cache-Control") == "no-store", path
    # The page's own script and its one inline style run under the policy:
    # the accent applies, and the place arrives live.
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "transport") == "events", what="the script ran")
    accent = driver.execute_script(
        "return getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()")
    assert accent == "#4f46e5", accent


def test_a_challenge_providers_origin_is_allowed_for_its_widget_and_nothing_wider(waitroom, bff_of, scratch):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--challenge-origin", "https://challenges.example.com")
    csp = _get(bff, "GET", "/wait").getheader("Content-Security-Policy")
    for directive in ("script-src 'self' https://challenges.example.com",
                      "connect-src 'self' https://challenges.example.com",
                      "frame-src https://challenges.example.com"):
        assert directive in csp, csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
    # Without it, no frames at all (default-src 'none').
    assert "frame-src" not in _get(bff_of(queue), "GET", "/wait").getheader("Content-Security-Policy")
    for origin in ("https://evil.example; script-src *", "http://plain.example", "https://*.example.com"):
        done = subprocess.run(
            [str(TARGET / "examples" / "bff"), "--waitroom", waitroom["addr"], "--jwks-url", waitroom["jwks"],
             "--listen", f"127.0.0.1:{free_port()}", "--challenge-origin", origin],
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode != 0 and "not an https origin" in done.stderr, (origin, done.stderr)


def test_a_post_from_another_site_is_refused(waitroom, bff_of):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--human-check", "pow")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for foreign in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.example"}):
        for path in ("/booking/purchase", "/human"):
            answer = _get(bff, "POST", path, {**form, **foreign}, "attempt=x")
            assert answer.status == 403, (path, foreign, answer.status)
    # From the site's own page it goes through (no admission: refused by
    # the booking page itself, not by the origin check).
    own = {**form, "Origin": f"http://127.0.0.1:{bff.port}", "Sec-Fetch-Site": "same-origin"}
    assert _get(bff, "POST", "/booking/purchase", own, "attempt=x").status == 403
    # (no visitor cookie: sent to the waiting page to get one)
    assert _get(bff, "POST", "/human", own).status == 303


def test_an_accent_that_is_not_a_css_colour_is_refused_at_start(waitroom, scratch):
    for accent in ("red;} body{display:none} x{", "url(https://evil.example/x)", "#12345", "rgb(1,2,3);x", "notacolour"):
        done = subprocess.run(
            [str(TARGET / "examples" / "bff"), "--waitroom", waitroom["addr"], "--jwks-url", waitroom["jwks"],
             "--listen", f"127.0.0.1:{free_port()}", "--accent", accent],
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode != 0 and "not a CSS colour" in done.stderr, (accent, done.stderr)
    for accent in ("#fff", "#4f46e5", "rebeccapurple", "rgb(79 70 229)", "hsl(243deg 75% 59% / 90%)"):
        bff = Bff(waitroom, "sale", scratch, "--accent", accent)
        connection = http.client.HTTPConnection("127.0.0.1", bff.port, timeout=10)
        connection.request("GET", "/wait")
        page = connection.getresponse().read().decode()
        connection.close()
        bff.stop()
        assert f"--accent: {accent};" in page, accent


def test_the_bff_serves_at_once_while_waitrooms_keys_are_unreachable_and_is_ready_once_they_arrive(waitroom, scratch):
    import http.server
    import threading

    real_jwks = urllib.request.urlopen(waitroom["jwks"], timeout=10).read()
    state = {"mode": "stall"}

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if state["mode"] == "stall":
                # Accepts and never answers, as a stalled endpoint does.
                time.sleep(30)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(real_jwks)

        def log_message(self, *args):
            pass

    keys = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    keys.daemon_threads = True
    threading.Thread(target=keys.serve_forever, daemon=True).start()
    try:
        for jwks in (f"http://127.0.0.1:{free_port()}/jwks.json", f"http://127.0.0.1:{keys.server_port}/jwks.json"):
            port = free_port()
            started = time.monotonic()
            bff = Process(
                [str(TARGET / "examples" / "bff"), "--waitroom", waitroom["addr"], "--jwks-url", jwks,
                 "--queue", "sale", "--listen", f"127.0.0.1:{port}", "--cookie-key", COOKIE_KEY],
                scratch / f"bff-keys-{port}.log",
            )
            try:
                wait_for_port(port, limit=5)
                assert time.monotonic() - started < 5
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/readyz")
                answer = conn.getresponse()
                assert answer.status == 503 and b"keys" in answer.read()
                conn.request("GET", "/booking")
                page = conn.getresponse()
                text = page.read().decode()
                assert page.status == 503 and "you keep your place" in text and 'http-equiv="refresh"' in text
                conn.close()
            finally:
                bff.stop()
        # The keys arrive: the BFF that kept trying turns ready.
        port = free_port()
        bff = Process(
            [str(TARGET / "examples" / "bff"), "--waitroom", waitroom["addr"], "--jwks-url",
             f"http://127.0.0.1:{keys.server_port}/jwks.json", "--queue", "sale", "--listen", f"127.0.0.1:{port}",
             "--cookie-key", COOKIE_KEY],
            scratch / f"bff-keys-{port}.log",
        )
        try:
            wait_for_port(port, limit=5)
            state["mode"] = "serve"
            deadline = time.monotonic() + 20
            while True:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    break
                assert time.monotonic() < deadline, "never ready after the keys arrived"
                time.sleep(0.2)
        finally:
            bff.stop()
    finally:
        keys.shutdown()


def test_secure_cookies_are_host_only_so_a_sibling_subdomain_cannot_plant_a_visitor(waitroom, bff_of):
    queue = new_queue(waitroom)
    bff = bff_of(queue, "--secure-cookies")
    first = _get(bff, "GET", "/wait")
    set_cookie = first.getheader("Set-Cookie")
    assert set_cookie.startswith("__Host-wr_visitor=") and "; Secure" in set_cookie and "Path=/;" in set_cookie
    value = set_cookie.split(";")[0].split("=", 1)[1]

    def visitor_id(header):
        return header.split(";")[0].split("=", 1)[1].split("~")[0].split(".")[0]

    # The same value under the plain name, as a sibling subdomain could set
    # it, names nobody: the visitor gets an id of their own.
    planted = _get(bff, "GET", "/wait", {"Cookie": f"wr_visitor={value}"})
    fresh = planted.getheader("Set-Cookie")
    assert fresh and fresh.startswith("__Host-wr_visitor=") and visitor_id(fresh) != visitor_id(set_cookie)
    # Under its own name it is the same visitor (a cookie set again only
    # keeps the new receipt).
    kept = _get(bff, "GET", "/wait", {"Cookie": f"__Host-wr_visitor={value}"})
    again = kept.getheader("Set-Cookie")
    assert kept.status == 200 and (again is None or visitor_id(again) == visitor_id(set_cookie))


def test_forwarded_addresses_count_only_from_trusted_proxies(waitroom, bff_of):
    queue = new_queue(waitroom)

    def new_visitors(bff, headers_each):
        statuses = []
        for headers in headers_each:
            statuses.append(_get(bff, "GET", "/wait", headers).status)
        return statuses

    # Behind a trusted proxy (this test's own address), each forwarded
    # client has its own budget; the rightmost untrusted hop counts, so a
    # client cannot pick its address by writing one further left.
    trusted = bff_of(queue, "--joins-per-minute", "1", "--trusted-proxies", "127.0.0.0/8,10.9.0.0/16")
    assert new_visitors(trusted, [
        {"X-Forwarded-For": "203.0.113.1"},
        {"X-Forwarded-For": "203.0.113.2"},
        {"X-Forwarded-For": "198.51.100.7, 203.0.113.3, 10.9.0.4"},
        {"Forwarded": 'for="[2001:db8::5]:443";proto=https'},
    ]) == [200, 200, 200, 200]
    assert new_visitors(trusted, [
        {"X-Forwarded-For": "203.0.113.1"},
        {"X-Forwarded-For": "1.2.3.4, 203.0.113.2"},
    ]) == [429, 429]
    # Without trusted proxies the headers are ignored: everyone here is the
    # TCP peer.
    untrusted = bff_of(queue, "--joins-per-minute", "1")
    assert new_visitors(untrusted, [
        {"X-Forwarded-For": "203.0.113.1"},
        {"X-Forwarded-For": "203.0.113.2"},
    ]) == [200, 429]


def test_a_bff_started_while_waitroom_is_down_serves_the_busy_page_and_joins_once_it_is_up(scratch):
    queue = "late"
    stack = Stack(scratch, "--queue", queue)
    try:
        stack.waitroom.stop()
        started = time.monotonic()
        bff = Bff(stack.services(), queue, scratch)
        assert time.monotonic() - started < 5
        answer, page = _read(bff, "GET", "/wait")
        # A newcomer has no place to keep yet: the page says it will join.
        assert answer.status == 503 and "puts you in line as soon as it can" in page, (answer.status, page)
        assert 'http-equiv="refresh"' in page
        ready, _ = _read(bff, "GET", "/readyz")
        assert ready.status == 503
        # Waitroom comes up: the BFF, still running, fetches the keys and
        # its visitors join.
        stack.start_waitroom()
        deadline = time.monotonic() + 40
        while _read(bff, "GET", "/readyz")[0].status != 200:
            assert time.monotonic() < deadline, "never ready once waitroom was up"
            time.sleep(0.2)
        answer, page = _read(bff, "GET", "/wait")
        assert answer.status == 200 and 'data-state="waiting"' in page, (answer.status, page)
        bff.stop()
    finally:
        stack.stop()


def _stalled_until_reconnecting(process: Process, driver, timeout: float, what: str):
    """Stops `process` (SIGSTOP: no reset, no error, only silence) until the
    page says it is reconnecting, then lets it go on."""
    process.proc.send_signal(signal.SIGSTOP)
    stalled = time.monotonic()
    try:
        until(driver, lambda d: body(d, "connection") == "reconnecting", timeout=timeout,
              what=f"the reconnecting state while {what} is stalled")
        print(f"reconnecting shown {time.monotonic() - stalled:.1f} s after {what} stalled")
    finally:
        process.proc.send_signal(signal.SIGCONT)


def test_a_page_says_it_is_reconnecting_while_waitroom_is_stalled_and_keeps_its_place(scratch, browser):
    # A stalled process sends no reset: only the BFF's keepalive notices.
    queue = "stall"
    stack = Stack(scratch, "--queue", f"{queue}:heartbeat_timeout=5s")
    try:
        bff, driver = _page_second_in_line(stack, queue, scratch, browser)
        ticket = body(driver, "ticket")
        # Stalled until the page notices, about twice the heartbeat.
        _stalled_until_reconnecting(stack.waitroom, driver, 25, "waitroom")
        _kept_its_place(stack, queue, driver, ticket)
        bff.stop()
    finally:
        stack.stop()


def test_a_page_whose_link_hangs_without_an_error_says_so_and_reconnects(waitroom, bff_of, browser):
    # The BFF itself stalls: the page's stream neither errs nor closes, and
    # only its silence tells.
    queue = new_queue(waitroom)
    join_others(waitroom, queue, 1)
    bff = bff_of(queue, "--keepalive", "2s")
    driver = browser()
    driver.get(bff.url + "/")
    until(driver, lambda d: body(d, "transport") == "events", what="events")
    ticket = body(driver, "ticket")
    # Longer than the page's patience (two keepalives and a second): the
    # keepalives keep a quiet stream live.
    time.sleep(7)
    assert body(driver, "connection") == "live", "keepalives keep a quiet stream live"
    _stalled_until_reconnecting(bff.process, driver, 15, "the BFF")
    ctl(waitroom, "admit", queue, "1")
    until(driver, lambda d: position(d) == 1, timeout=20, what="the place, live again")
    assert body(driver, "ticket") == ticket
    assert body(driver, "connection") == "live"
