"""A page in headless Firefox driven over WebDriver BiDi, the W3C protocol Firefox
speaks by itself (`--remote-debugging-port`), so no geckodriver and no browser
download: Debian's `firefox-esr` and the `websockets` package are all it needs.

`FirefoxPage` offers the few calls `check_dashboard.py` makes of a Playwright page
(`goto`, `wait_for_selector`, `select_option`, `fill`, `click`, `inner_text`,
`screenshot`), and reports the hosts the page asked and its script errors.
"""

import base64
import json
import os
import re
import subprocess
import tempfile
import time
from urllib.parse import urlparse

from websockets.sync.client import connect

# Firefox would otherwise reach out at start (updates, telemetry, remote settings):
# send whatever is not loopback to a closed port, and turn those services off.
PREFS = {
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.no_proxies_on": "localhost, 127.0.0.1, ::1",
    "app.update.disabledForTesting": True,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class FirefoxPage:
    def __init__(self, firefox, width, height):
        self.profile = tempfile.TemporaryDirectory()
        with open(os.path.join(self.profile.name, "user.js"), "w") as prefs:
            for name, value in PREFS.items():
                prefs.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [firefox, "--headless", "--no-remote", "--profile", self.profile.name,
             "--remote-debugging-port=0", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.ws = connect(f"{self._endpoint()}/session", max_size=64 << 20)
        self.next_id = 0
        self.hosts = set()
        self.errors = []
        self._send("session.new", {"capabilities": {}})
        self.context = self._send("browsingContext.getTree", {})["contexts"][0]["context"]
        self._send("session.subscribe",
                   {"events": ["network.beforeRequestSent", "log.entryAdded"]})
        self._send("browsingContext.setViewport",
                   {"context": self.context, "viewport": {"width": width, "height": height}})

    def _endpoint(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.seek(0)
            said = self.log.read().decode(errors="replace")
            found = re.search(r"WebDriver BiDi listening on (ws://\S+)", said)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"Firefox exited before listening: {said}")
            time.sleep(0.1)
        raise RuntimeError("Firefox did not open its WebDriver BiDi port")

    def _event(self, message):
        params = message.get("params", {})
        if message.get("method") == "network.beforeRequestSent":
            self.hosts.add(urlparse(params["request"]["url"]).netloc)
        elif message.get("method") == "log.entryAdded" and params.get("type") == "javascript":
            self.errors.append(params.get("text", ""))

    def _send(self, method, params):
        self.next_id += 1
        sent = self.next_id
        self.ws.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("type") == "event":
                self._event(message)
            elif message.get("id") == sent:
                if message.get("type") == "error":
                    raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    def _eval(self, expression):
        result = self._send("script.evaluate", {
            "expression": expression,
            "target": {"context": self.context},
            "awaitPromise": False,
        })
        if result["type"] == "exception":
            raise RuntimeError(result["exceptionDetails"]["text"])
        return result["result"].get("value")

    def goto(self, url):
        self._send("browsingContext.navigate",
                   {"context": self.context, "url": url, "wait": "complete"})

    def wait_for_selector(self, selector, timeout):
        deadline = time.monotonic() + timeout / 1000
        query = f"document.querySelector({json.dumps(selector)}) !== null"
        while not self._eval(query):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {selector} within {timeout} ms")
            time.sleep(0.2)

    def select_option(self, selector, value):
        self._eval(f"""(() => {{
            const s = document.querySelector({json.dumps(selector)});
            if (![...s.options].some(o => o.value === {json.dumps(value)}))
                throw new Error("no option " + {json.dumps(value)});
            s.value = {json.dumps(value)};
            s.dispatchEvent(new Event("input", {{ bubbles: true }}));
            s.dispatchEvent(new Event("change", {{ bubbles: true }}));
        }})()""")

    def fill(self, selector, text):
        self._eval(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            e.focus();
            e.value = {json.dumps(text)};
            e.dispatchEvent(new Event("input", {{ bubbles: true }}));
        }})()""")

    def click(self, selector):
        self._eval(f"document.querySelector({json.dumps(selector)}).click()")

    def inner_text(self, selector):
        return self._eval(f"document.querySelector({json.dumps(selector)}).innerText")

    def screenshot(self, path, full_page=True):
        shot = self._send("browsingContext.captureScreenshot", {
            "context": self.context,
            "origin": "document" if full_page else "viewport",
        })
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self._send("session.end", {})
        except Exception:
            pass
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.profile.cleanup()
