#!/usr/bin/python3
"""Drives mapq's web console in headless Chromium with Selenium, against a live server that
tests/console.rs started and filled with data. Run with Debian's /usr/bin/python3 (its
python3-selenium), and Debian's chromium and chromedriver.

    console_test.py open   BASE_URL SHOT_DIR           every page, the live tail, produce,
                                                       delete, errors, markup, keyboard, width
    console_test.py tokens BASE_URL SHOT_DIR READER ADMIN
                                                       sign-in; a consume-only token sees no
                                                       produce form and is refused by the server
    console_test.py cluster BASE_URL SHOT_DIR          the cluster page of a cluster node

Each check that fails raises (the exit status is not 0); the last line printed is a JSON
object of measurements (page weight, first render) for the Rust test to report.
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

MODE, BASE, SHOTS = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
os.makedirs(SHOTS, exist_ok=True)


def browser(width=1280, height=900):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    return d


def http(method, path, body=None, token=None):
    """The status and JSON body of an API call made without the browser."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait(d, cond, timeout=10, what="a condition"):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.02).until(cond)
    except Exception as e:
        shot(d, "failed")
        raise AssertionError(f"waited {timeout} s for {what}; page: {d.find_element(By.ID, 'main').text[:2000]}") from e


def text_of(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text


def has_text(css, text):
    def check(d):
        try:
            return text in d.find_element(By.CSS_SELECTOR, css).text
        except Exception:
            return False
    return check


def shot(d, name):
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def errors(d, allow=()):
    """The browser log's errors since the last call, minus those `allow` names."""
    found = []
    for entry in d.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if any(a in entry["message"] for a in allow):
            continue
        found.append(entry["message"])
    return found


def no_errors(d, page):
    e = errors(d)
    assert not e, f"JavaScript or network errors on {page}: {e}"


def go(d, route, ready_css, ready_text=None, name=None):
    d.get(BASE + "/ui/#" + route)
    if ready_text is None:
        wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, ready_css)), what=ready_css)
    else:
        wait(d, has_text(ready_css, ready_text), what=f"{ready_text!r} in {ready_css}")
    if name:
        shot(d, name)
    no_errors(d, route)


def main_has_no(d, tag):
    return not d.find_elements(By.CSS_SELECTOR, "main " + tag)


def open_mode():
    d = browser()
    measured = {}
    try:
        # First load: what it transfers, and when it first renders.
        d.get(BASE + "/ui/")
        wait(d, has_text("main table", "orders"), what="the overview's topics")
        perf = d.execute_script("""
            const nav = performance.getEntriesByType('navigation')[0];
            const res = performance.getEntriesByType('resource');
            const assets = res.filter(r => r.initiatorType !== 'fetch');
            const paint = performance.getEntriesByType('paint')
                .find(p => p.name === 'first-contentful-paint');
            return {
              document_bytes: nav.transferSize,
              assets_bytes: assets.reduce((a, r) => a + r.transferSize, 0),
              api_bytes: res.filter(r => r.initiatorType === 'fetch')
                            .reduce((a, r) => a + r.transferSize, 0),
              first_contentful_paint_ms: paint ? paint.startTime : null,
              dom_content_loaded_ms: nav.domContentLoadedEventEnd,
            };""")
        measured.update(perf)
        measured["first_load_bytes"] = perf["document_bytes"] + perf["assets_bytes"]
        # The charts draw from the second sample on.
        wait(d, has_text("main .legend", "records/s "), what="the charts' legends")
        # The background producer's records are charted: a rate above 0 (from the second
        # sample, 2 s apart).
        def charted(d):
            m = re.search(r"records/s ([0-9][0-9,.]*)", text_of(d, "main .charts .legend"))
            return m is not None and float(m.group(1).replace(",", "")) > 0
        wait(d, charted, timeout=15, what="a rate above 0 in the charts")
        shot(d, "overview")
        no_errors(d, "overview")
        cards = text_of(d, "main .cards")
        assert "Topics" in cards and "Data on disk" in cards, cards
        assert d.find_element(By.ID, "nav-cluster").get_attribute("hidden") is not None, "cluster link on a lone server"

        # Topics, a topic, a partition.
        go(d, "/topics", "main table", "orders", "topics")
        go(d, "/topics/orders", "main table", "High watermark", "topic")
        rows = d.find_elements(By.CSS_SELECTOR, "main table tbody tr")
        assert len(rows) == 2, [r.text for r in rows]
        go(d, "/topics/orders/0", "#records", "plain text", "partition")
        body = text_of(d, "#records")
        assert '"nested": {\n    "n": 1' in d.execute_script(
            "return [...document.querySelectorAll('#records pre.json')].map(p => p.textContent).join('\\n')"), body
        hexes = d.execute_script("return [...document.querySelectorAll('#records pre.hex')].map(p => p.textContent)")
        assert any(x.startswith("00 01 fe ff") for x in hexes), hexes
        # Markup in records is text: shown literally, never run.
        assert '<img src=x onerror="window.__xss=1">' in body, body
        assert "<script>window.__xss=2</script>" in body, body
        assert d.execute_script("return window.__xss") is None, "a record's markup ran"
        assert main_has_no(d, "img") and main_has_no(d, "script"), "a record's markup became elements"

        # Browse from a time: the record produced last (its timestamp) and nothing before.
        status, rec = http("GET", "/v1/topics/orders/partitions/0/records?offset=0&max_records=1000")
        last = rec["records"][-1]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(last["timestamp_ms"] / 1000))
        time_input = d.find_element(By.CSS_SELECTOR, "#browse input[name=time]")
        d.execute_script("arguments[0].value = arguments[1]", time_input, stamp)
        d.find_element(By.CSS_SELECTOR, "#browse button[type=submit]").click()
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#records tr")
             and d.find_element(By.CSS_SELECTOR, "#records tr td").text.replace(",", "") <= str(last["offset"]),
             what="records from a time")

        # The live tail: a record produced over HTTP shows within a second; paused, it waits.
        d.find_element(By.ID, "tail-toggle").click()
        wait(d, has_text("#tail-state", "live"), what="the tail to start")
        time.sleep(0.5)
        marker = f"tail-{time.time_ns()}"
        sent = time.monotonic()
        status, _ = http("POST", "/v1/topics/orders/records", {"records": [{"value": marker, "partition": 0}]})
        assert status == 200, status
        wait(d, has_text("#tail", marker), timeout=1.0, what="the produced record in the live tail within 1 s")
        measured["tail_ms"] = round((time.monotonic() - sent) * 1000, 1)
        d.find_element(By.ID, "tail-toggle").click()
        wait(d, has_text("#tail-state", "paused"), what="the pause")
        held = f"held-{time.time_ns()}"
        http("POST", "/v1/topics/orders/records", {"records": [{"value": held, "partition": 0}]})
        time.sleep(1.0)
        assert held not in text_of(d, "#tail"), "a paused tail showed a record"
        d.find_element(By.ID, "tail-toggle").click()
        wait(d, has_text("#tail", held), timeout=2, what="the held record after resuming")
        shot(d, "partition-tail")
        no_errors(d, "the live tail")

        # Produce: the form appends a record that HTTP consume returns.
        go(d, "/produce", "#produce", name=None)
        value = f"from-the-console-{time.time_ns()}"
        d.find_element(By.NAME, "topic").send_keys("orders")
        d.find_element(By.NAME, "partition").send_keys("1")
        d.find_element(By.NAME, "key").send_keys("console-key")
        d.find_element(By.NAME, "value").send_keys(value)
        d.find_element(By.NAME, "headers").send_keys("source: console")
        d.find_element(By.CSS_SELECTOR, "select[name=durability] option[value=fsync]").click()
        shot(d, "produce")
        d.find_element(By.CSS_SELECTOR, "#produce button[type=submit]").click()
        wait(d, has_text("#produce-result", "Appended"), what="the produce answer")
        words = text_of(d, "#produce-result").split()
        offset = int(words[words.index("offset") + 1].rstrip("."))
        status, got = http("GET", f"/v1/topics/orders/partitions/1/records?offset={offset}&max_records=1")
        r = got["records"][0]
        assert (r["key"], r["value"], r["headers"]) == ("console-key", value, {"source": "console"}), r
        no_errors(d, "produce")

        # Groups: with members (assignment, lag), queue (backlog, dead letters, its topic).
        go(d, "/groups", "main table", "workers", "groups")
        go(d, "/groups/billing", "main", "w-1", "group-members")
        assert "Committed offsets and lag" in text_of(d, "main")
        go(d, "/groups/workers", "main", "Dead-lettered", "group-queue")
        assert "null" not in text_of(d, "main").split(), text_of(d, "main")
        cards = text_of(d, "main .cards")
        assert "Dead-lettered\n1" in cards, cards
        d.find_element(By.ID, "dlq-link").click()
        wait(d, has_text("#topic-name", "jobs.dlq"), what="the dead-letter topic's page")
        no_errors(d, "groups")

        # Deleting a topic asks first: nothing until its name is typed and confirmed.
        status, _ = http("POST", "/v1/topics", {"name": "doomed", "partitions": 1})
        assert status == 201, status
        go(d, "/topics/doomed", "#delete-topic")
        d.find_element(By.ID, "delete-topic").click()
        wait(d, EC.visibility_of_element_located((By.ID, "confirm-delete")), what="the confirmation")
        assert not d.find_element(By.ID, "confirm-delete").is_enabled(), "delete enabled before the name is typed"
        shot(d, "delete-confirm")
        assert http("GET", "/v1/topics/doomed")[0] == 200, "deleted before confirmation"
        d.find_element(By.ID, "confirm-name").send_keys("doomed")
        d.find_element(By.ID, "confirm-delete").click()
        wait(d, lambda d: d.current_url.endswith("#/topics"), what="the topics page after the deletion")
        assert http("GET", "/v1/topics/doomed")[0] == 404, "not deleted"
        no_errors(d, "delete")

        # Keyboard: the skip link, then the navigation, reached with Tab and followed with Enter.
        d.get(BASE + "/ui/#/")
        d.refresh()
        wait(d, has_text("main table", "orders"), what="the overview")
        focused = []
        for _ in range(8):
            ActionChains(d).send_keys(Keys.TAB).perform()
            el = d.switch_to.active_element
            focused.append(el.text)
            if el.text == "Topics":
                el.send_keys(Keys.ENTER)
                break
        assert "Skip to content" in focused, focused
        wait(d, lambda d: d.current_url.endswith("#/topics"), what=f"Enter on the Topics link (focus went {focused})")
        no_errors(d, "keyboard")

        # A narrow window: no sideways scrolling of the page (tables scroll in their box).
        d.set_window_size(390, 844)
        for route, css in (("/", "main table"), ("/topics/orders/0", "#records tr"), ("/groups/workers", "main table")):
            d.get(BASE + "/ui/#" + route)
            wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, css)), what=css)
            width = d.execute_script("return document.documentElement.scrollWidth")
            assert width <= 391, f"{route} is {width} px wide in a 390 px window"
        shot(d, "narrow")
        no_errors(d, "a narrow window")
        d.set_window_size(1280, 900)

        # Errors are the API's own messages, as text.
        d.get(BASE + "/ui/#/topics/nosuch")
        wait(d, has_text("main .error", "topic_not_found"), what="the error")
        assert "topic 'nosuch' does not exist" in text_of(d, "main .error")
        d.get(BASE + "/ui/#/topics")
        wait(d, EC.presence_of_element_located((By.ID, "create-topic")), what="the create form")
        d.find_element(By.CSS_SELECTOR, "#create-topic input[name=name]").send_keys("<b>bold</b>")
        d.find_element(By.CSS_SELECTOR, "#create-topic button").click()
        wait(d, has_text("#create-topic .error", "invalid_name"), what="the invalid name's error")
        assert "<b>bold</b>" in text_of(d, "#create-topic .error")
        assert main_has_no(d, "b"), "a topic name's markup became an element"
        shot(d, "error")
        left = errors(d, allow=("status of 404", "status of 400"))
        assert not left, left
    finally:
        d.quit()
    return measured


def tokens_mode(reader, admin):
    d = browser()
    try:
        d.get(BASE + "/ui/")
        wait(d, EC.presence_of_element_located((By.ID, "login")), what="the sign-in form")
        no_errors(d, "sign-in")
        shot(d, "sign-in")
        d.find_element(By.ID, "token").send_keys("not-a-token")
        d.find_element(By.CSS_SELECTOR, "#login button").click()
        wait(d, has_text("#login .error", "not valid"), what="the refusal of a bad token")
        tok = d.find_element(By.ID, "token")
        tok.clear()
        tok.send_keys(reader)
        d.find_element(By.CSS_SELECTOR, "#login button").click()
        wait(d, has_text("main table", "orders"), what="the overview with the reader's token")
        assert "reader" in text_of(d, "#who")
        # The token lives in this session's storage only.
        assert d.execute_script("return sessionStorage.getItem('mapq.token')") == reader
        assert d.execute_script("return localStorage.length") == 0
        assert d.get_cookies() == []
        # A consume-only token: no produce link, form, delete button or create form.
        assert d.find_element(By.ID, "nav-produce").get_attribute("hidden") is not None
        go(d, "/produce", "#no-produce")
        assert not d.find_elements(By.ID, "produce")
        go(d, "/topics/orders", "main table", "High watermark")
        assert not d.find_elements(By.ID, "delete-topic")
        go(d, "/topics", "main table", "orders")
        assert not d.find_elements(By.ID, "create-topic")
        no_errors(d, "the reader's pages")
        # Outside its grants, the server refuses (the console hid it; the server decides).
        status = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/v1/topics/orders/records', {method: 'POST',
                  headers: {'Content-Type': 'application/json',
                            'Authorization': 'Bearer ' + sessionStorage.getItem('mapq.token')},
                  body: JSON.stringify({records: [{value: 'x'}]})}).then(r => done(r.status));""")
        assert status == 403, status
        # Signing out forgets it.
        d.find_element(By.ID, "logout").click()
        wait(d, EC.presence_of_element_located((By.ID, "login")), what="the sign-in form again")
        assert d.execute_script("return sessionStorage.getItem('mapq.token')") is None
    finally:
        d.quit()
    # A new browser session asks again; the admin token sees the produce form.
    d = browser()
    try:
        d.get(BASE + "/ui/")
        wait(d, EC.presence_of_element_located((By.ID, "login")), what="sign-in in a new session")
        d.find_element(By.ID, "token").send_keys(admin)
        d.find_element(By.CSS_SELECTOR, "#login button").click()
        wait(d, has_text("main table", "orders"), what="the overview with the admin token")
        go(d, "/produce", "#produce")
        go(d, "/topics/orders", "#delete-topic")
        no_errors(d, "the admin's pages")
    finally:
        d.quit()
    return {}


def cluster_mode():
    d = browser()
    try:
        d.get(BASE + "/ui/")
        wait(d, lambda d: d.find_element(By.ID, "nav-cluster").get_attribute("hidden") is None,
             what="the cluster link")
        go(d, "/cluster", "main", "Partitions", None)
        wait(d, has_text("main", "orders"), what="the topic's partitions")
        shot(d, "cluster")
        text = text_of(d, "main")
        assert "Nodes alive" in text and "Under-replicated" in text and "In sync" in text, text
        no_errors(d, "cluster")
    finally:
        d.quit()
    return {}


if __name__ == "__main__":
    if MODE == "open":
        out = open_mode()
    elif MODE == "tokens":
        out = tokens_mode(sys.argv[4], sys.argv[5])
    elif MODE == "cluster":
        out = cluster_mode()
    else:
        raise SystemExit(f"unknown mode {MODE}")
    print(json.dumps(out))
