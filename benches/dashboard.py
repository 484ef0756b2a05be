"""Dashboard benchmark: the embedded assets' size, first paint in headless Chromium,
and an idle light node's CPU and memory without and with the dashboard open.

Usage: dashboard.py RELAYMESH_BINARY CHROMIUM [SECONDS]
(scripts/bench-dashboard builds the release binary and runs this.)
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

binary, chromium = sys.argv[1], sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
ticks = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(pid, secs):
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(secs)
    used = cpu_seconds(pid) - start_cpu
    return 100.0 * used / (time.monotonic() - start), rss_mib(pid)


port = free_port()
base = f"http://127.0.0.1:{port}"
with tempfile.TemporaryDirectory() as data:
    node = subprocess.Popen(
        [binary, "node", "--light", "--data-dir", data, "--mesh", "bench-dashboard",
         "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--api", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/relaymesh/v1/status")
                break
            except OSError:
                time.sleep(0.1)
        sizes = {
            path: len(urllib.request.urlopen(base + path).read())
            for path in ["/", "/dashboard/app.js", "/dashboard/style.css"]
        }
        time.sleep(5)  # settle after start
        idle_cpu, idle_rss = measure(node.pid, seconds)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            started = time.monotonic()
            page.goto(base + "/")
            page.wait_for_selector("#live.on")
            live_after = time.monotonic() - started
            paint = page.evaluate(
                "() => performance.getEntriesByType('paint').map(e => [e.name, e.startTime])"
            )
            load = page.evaluate(
                "() => performance.getEntriesByType('navigation')[0].loadEventEnd"
            )
            open_cpu, open_rss = measure(node.pid, seconds)
            browser.close()
    finally:
        node.terminate()
        node.wait()

print(json.dumps({
    "asset_bytes": sizes,
    "asset_bytes_total": sum(sizes.values()),
    "first_contentful_paint_ms": dict(paint).get("first-contentful-paint"),
    "load_event_ms": load,
    "live_after_s": round(live_after, 3),
    "idle_light_node": {"cpu_percent_of_a_core": round(idle_cpu, 2), "rss_mib": round(idle_rss, 1)},
    "with_dashboard_open": {"cpu_percent_of_a_core": round(open_cpu, 2), "rss_mib": round(open_rss, 1)},
    "seconds_each": seconds,
}, indent=2))
