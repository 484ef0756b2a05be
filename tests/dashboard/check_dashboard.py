"""Drives the node's dashboard in a headless browser: Chromium (Debian's `chromium`,
through Playwright) or Firefox (Debian's `firefox-esr`, through WebDriver BiDi:
`bidi.py`).

Usage: check_dashboard.py chromium|firefox URL BROWSER OUT_DIR MODEL PEER_ID...

Loads the dashboard at URL, waits until every PEER_ID is in the mesh graph and MODEL
in the model table, sends a chat in the playground and waits for the streamed answer
and the request in the live list, saves screenshots into OUT_DIR (named after the
browser), and checks that the page asked no host but the node. With
DASHBOARD_PRIVATE=1 (a private mesh) it also checks that the node's and its peers'
membership is shown. Prints what it saw as JSON; exits 1 on a failure.
"""

import contextlib
import json
import os
import sys
import time
from urllib.parse import urlparse

kind, url, browser_path, out, model, *peers = sys.argv[1:]
# Set by the test when the mesh is private: the members must be shown.
PRIVATE = os.environ.get("DASHBOARD_PRIVATE") == "1"
node = urlparse(url).netloc
asked = set()
errors = []


@contextlib.contextmanager
def open_page():
    """A page of the browser asked for; `asked` and `errors` are filled as it runs."""
    if kind == "firefox":
        from bidi import FirefoxPage

        page = FirefoxPage(browser_path, 1400, 1000)
        try:
            yield page
        finally:
            asked.update(page.hosts)
            errors.extend(page.errors)
            page.close()
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: asked.add(urlparse(r.url).netloc))
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()


shots = f"{out}/dashboard" if kind == "chromium" else f"{out}/{kind}-dashboard"
with open_page() as page:
    page.goto(url)
    for peer in peers:
        page.wait_for_selector(f'#graph circle[data-peer="{peer}"]', timeout=30_000)
    page.wait_for_selector(f'#models tr[data-model="{model}"]', timeout=30_000)
    page.wait_for_selector("#live.on", timeout=30_000)
    page.wait_for_selector("#serving", timeout=30_000)
    serving = page.inner_text("#serving")
    membership, peer_rows = "", ""
    if PRIVATE:
        # In a private mesh: what this node and each peer were admitted as.
        page.wait_for_selector("#membership", timeout=30_000)
        membership = page.inner_text("#membership")
        page.wait_for_selector("#peers.private td.member", timeout=30_000)
        peer_rows = page.inner_text("#peers tbody")
    page.screenshot(path=f"{shots}.png", full_page=True)

    page.select_option("#chat-model", model)
    page.fill("#chat-prompt", "Name three colours.")
    page.click("#chat-send")
    sent_at = time.monotonic()
    page.wait_for_selector('#chat-meta[data-done="true"]', timeout=120_000)
    print(f"answered in {time.monotonic() - sent_at:.1f} s", file=sys.stderr)
    answer = page.inner_text("#chat-answer")
    meta = page.inner_text("#chat-meta")
    page.wait_for_selector("#requests tbody tr", timeout=30_000)
    request_row = page.inner_text("#requests tbody tr")
    # Once this node has been served, the table shows the speed and TTFT it measured,
    # and the supplier's score here.
    measured = f'#models tr[data-model="{model}"] td[title^="measured"] + td[title^="measured"]'
    page.wait_for_selector(measured, timeout=30_000)
    model_row = page.inner_text(f'#models tr[data-model="{model}"]')
    page.screenshot(path=f"{shots.replace('dashboard', 'playground')}.png", full_page=True)

seen = {
    "browser": kind,
    "answer": answer,
    "meta": meta,
    "request_row": request_row,
    "serving": serving,
    "model_row": model_row,
    "membership": membership,
    "peer_rows": peer_rows,
    "hosts_asked": sorted(asked),
    "page_errors": errors,
}
print(json.dumps(seen, indent=2))
problems = []
if not answer.strip():
    problems.append("the playground streamed no text")
if "answered by" not in meta:
    problems.append(f"no supplier shown: {meta!r}")
if model not in request_row:
    problems.append(f"the request is not in the live list: {request_row!r}")
if model_row.split("\t")[5] in ("", "-"):
    problems.append(f"no score for the supplier that answered: {model_row!r}")
if PRIVATE and not (membership.startswith("member as") and "app until" in membership):
    problems.append(f"the node's membership is not shown: {membership!r}")
if PRIVATE and not ("(owner)" in peer_rows and "supplier until" in peer_rows):
    problems.append(f"the peers' membership is not shown: {peer_rows!r}")
if "serving" not in serving:
    problems.append(f"the node's facts do not say what it serves: {serving!r}")
if asked != {node}:
    problems.append(f"the page asked hosts other than the node ({node}): {sorted(asked)}")
if errors:
    problems.append(f"script errors: {errors}")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
