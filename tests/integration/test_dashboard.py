"""The coordinator's dashboard in a real headless Chromium, against a real network on loopback.

Skipped without Chromium, except under SWARMGRPO_REQUIRE_BROWSER=1 (`make test` sets it, and installs
Debian's `chromium`)."""

import json
import os
import re
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from swarmgrpo.node.engines.base import Completion
from swarmgrpo.protocol import swarm_pb2
from swarmgrpo.trainer.rollouts import submission
from tests.integration.netfixtures import join, open_network

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SWARMGRPO_CHROMIUM", "/usr/bin/chromium")
# What a closed network needs: no background connections, no first-run or update checks.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("SWARMGRPO_REQUIRE_BROWSER") == "1":
            raise RuntimeError(
                f"SWARMGRPO_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium"
            )
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def network(tmp_path, request):
    with open_network(tmp_path, **getattr(request, "param", {"train": {"max_steps": 3}})) as net:
        yield net


@pytest.fixture
def open_page(browser):
    """open_page(net) -> (page, errors): the dashboard, polling every 250 ms, with the console's
    errors collected; closed at the end (a page left open would go on polling a dead port)."""
    pages = []

    def open_(net):
        page = browser.new_page()
        pages.append(page)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://{net.http}/?poll_ms=250")
        return page, errors

    yield open_
    for page in pages:
        page.close()


def _status(net, query: str = "") -> dict:
    body = urllib.request.urlopen(f"http://{net.http}/status{query}", timeout=10).read()
    return json.loads(body, parse_constant=lambda c: pytest.fail(f"/status holds {c}: not JSON"))


def _until(condition, timeout: float = 20.0) -> None:
    """Poll from here: the page's CSP forbids the eval that page.wait_for_function polls with."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.1)


def test_the_dashboard_follows_a_run_and_says_when_the_coordinator_is_gone(open_page, network):
    network.start_coordinator()
    trainer = network.start_node("trainer", "train")
    rollout = network.start_node("rollout", "rollout")
    page, errors = open_page(network)
    assert network.wait(trainer, 240, "trainer") == 0, network.logs()
    assert network.wait(rollout, 120, "rollout") == 0, network.logs()
    _until(lambda: page.text_content("#version") == "3 / 3")
    _until(lambda: page.locator("#nodes tbody tr.gone").count() == 2)
    snap = _status(network)

    # the figures are the coordinator's
    counts = snap["counts"]
    info = page.text_content("#run-info")
    assert page.text_content("#run-id") == snap["run_id"]
    assert "model tiny" in info and "task uppercase" in info
    assert counts["rollouts_accepted"] > 0
    assert page.text_content("#accepted") == str(counts["rollouts_accepted"])
    assert page.text_content("#trained") == str(counts["rollouts_trained"])
    assert page.text_content("#alive") == "0 / 2"  # both finished and left
    # one marker per published version, labelled with its reward (JS rounds ties up, Python to
    # even: the numbers are compared, not the strings)
    titles = page.eval_on_selector_all("#chart-reward circle title", "ts => ts.map(t => t.textContent)")
    shown = [re.fullmatch(r"version (\d+): (\S+) ± (\S+)", t).groups() for t in titles]
    assert len(shown) == len(snap["steps"]) == 3, titles
    for (version, mean, std), step in zip(shown, snap["steps"], strict=True):
        assert int(version) == step["version"]
        assert abs(float(mean) - step["reward_mean"]) <= 6e-4
        assert abs(float(std) - step["reward_std"]) <= 6e-4
    assert page.locator("#chart-loss circle").count() == 3
    # what the page polls with: only the versions after `since`, and the last step whatever it is
    assert [s["version"] for s in _status(network, "?since=2")["steps"]] == [3]
    latest = _status(network, "?since=3")
    assert latest["steps"] == [] and latest["last_step"] == snap["last_step"] and latest["steps_since"] == 3
    # a row per node, with the columns of `swarmgrpo status`
    script = "trs => trs.map(tr => ({id: tr.dataset.nodeId, cells: [...tr.cells].map(c => c.textContent)}))"
    rows = {r["id"]: r["cells"] for r in page.eval_on_selector_all("#nodes tbody tr", script)}
    for n in snap["nodes"]:
        cells = rows[n["node_id"]]
        role = n["roles"][0].removeprefix("ROLE_").lower()
        assert cells[:4] == [n["node_id"][:8], role, "cpu", "no"], cells
        assert cells[7:10] == [
            str(n["tokens_generated"]),
            str(n["rollouts_accepted"]),
            str(n["steps_trained"]),
        ]
        assert cells[11] == "left"
    assert page.is_hidden("#banner")
    assert not errors, errors

    network.kill9_coordinator()
    page.wait_for_selector("#banner", state="visible", timeout=10_000)
    assert "coordinator unreachable" in page.text_content("#banner")
    assert page.locator("#nodes tbody tr").count() == 2  # what it last knew stays on the page
    assert page.text_content("#version") == "3 / 3"
    # the polls that found no coordinator (refused, or reset when one was in flight), and nothing else
    assert errors and all(e.startswith("Failed to load resource: net::ERR_") for e in errors), errors


@pytest.mark.parametrize("network", [{"heartbeat_interval_s": 60.0}], indirect=True)  # alive throughout
def test_what_a_hostile_node_reports_is_shown_as_text_and_cannot_break_the_page(open_page, network):
    """A node's activity and timings are the node's to choose: the page shows them, never runs them,
    and a rate of infinity (a generation_s of 5e-324 s) does not make /status invalid JSON."""
    network.start_coordinator()
    client, _ = join(network)
    lease = client.lease(0, 2)
    group = [Completion([5, 6, 7], [-1.0] * 3, finished=True)] * lease.group_size
    req = submission(lease, [group] * len(lease.prompts), generation_s=5e-324)
    assert client.submit(req).status == swarm_pb2.SUBMIT_ACCEPTED
    assert _status(network)["nodes"][0]["tokens_per_s"] == 0.0  # no rate, rather than infinity
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    client.heartbeat(0, hostile, 12.0)
    page, errors = open_page(network)
    _until(lambda: page.locator("#nodes tbody tr").count() == 1)
    assert page.text_content("#nodes tbody tr td:last-child") == hostile
    assert page.locator("#nodes img, #nodes script").count() == 0
    page.wait_for_timeout(500)  # a few polls: an onerror handler would have run by now
    assert page.evaluate("window.pwned") is None
    assert page.text_content("#alive") == "1 / 1"
    assert page.text_content("#accepted") == "2"
    assert page.text_content("#chart-reward text") == "no steps yet"
    assert page.is_hidden("#banner")
    assert not errors, errors


def test_the_dashboard_is_served_with_a_policy_that_forbids_inline_script(network):
    network.start_coordinator()
    with urllib.request.urlopen(f"http://{network.http}/", timeout=10) as reply:
        assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = reply.headers["Content-Security-Policy"]
        page = reply.read().decode()
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert '<script src="dashboard.js"' in page and "<script>" not in page
    for asset, kind in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        with urllib.request.urlopen(f"http://{network.http}/{asset}", timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith(kind) and reply.read()
    # Refused, and never echoed into the headers; "١٢" (Arabic-Indic digits) passes str.isdigit and a
    # 20-digit number overflows SQLite: both dropped the connection instead of answering 400.
    for bad in ("x", "-1", "%0d%0aSet-Cookie:%20a=b", "%D9%A1%D9%A2", "9" * 20):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{network.http}/status?since={bad}", timeout=10)
        assert refused.value.code == 400 and "Set-Cookie" not in refused.value.headers
        assert "since must be a version number" in refused.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{network.http}/nope", timeout=10)
    assert missing.value.code == 404 and "the dashboard" in missing.value.read().decode()


@pytest.mark.parametrize("network", [{"heartbeat_interval_s": 60.0}], indirect=True)  # alive throughout
def test_status_stays_bounded_however_many_keys_join_with_long_fields(network):
    """Keys are free: 110 of them join with the longest fields Join and Heartbeat accept (16 addresses of
    ~320 characters, 512-character texts). /status lists MAX_NODES_SHOWN of them, counts them all, and
    cuts every string and list; before, it listed every node in full (864 KB here, growing with keys)."""
    from swarmgrpo.coordinator.status import MAX_ITEMS, MAX_NODES_SHOWN, MAX_TEXT

    network.start_coordinator()
    host = ".".join(["a" * 63] * 3) + "." + "b" * 50  # a 241-character DNS name
    peer = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
    long_text = "x" * 512

    def join_one(i):
        client, _ = join(
            network,
            busy_patience_s=60,
            device_name=long_text,
            peer_id=long_text,
            peer_addrs=[f"/dns4/{host}/tcp/{i * 16 + j}/p2p/{peer}" for j in range(16)],
            software_version=long_text,
        )
        client.heartbeat(0, long_text, 1.0)
        client.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(join_one, range(110)))
    with urllib.request.urlopen(f"http://{network.http}/status", timeout=30) as reply:
        body = reply.read()
    snap = json.loads(body)
    assert len(snap["nodes"]) == MAX_NODES_SHOWN and snap["nodes_total"] == snap["nodes_alive"] == 110

    def longest(value) -> tuple[int, int]:  # (longest string, longest list) inside `value`
        if isinstance(value, str):
            return len(value), 0
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        inner = [longest(v) for v in items] or [(0, 0)]
        own = len(value) if isinstance(value, list) else 0
        return max(t for t, _ in inner), max(own, *(n for _, n in inner))

    assert longest(snap["nodes"][0]) == (MAX_TEXT, MAX_ITEMS)
    assert len(body) < MAX_NODES_SHOWN * 5_000, f"/status is {len(body)} bytes"
