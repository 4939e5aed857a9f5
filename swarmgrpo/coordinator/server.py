"""`swarmgrpo coordinator`: wires the store, the gRPC service and the HTTP side, and runs until stopped.

    open state_dir/run.sqlite (resume if it exists) → load tokenizer + task → DHT peer on `dht_listen`
    → gRPC on `listen` → HTTP / (the dashboard), /status, /runlog/<table> (`runlog`), /metrics on
      `http_listen`
    → every second: expire leases and nonces past the clock window, and publish a step whose live
      workers have all reported;
      every heartbeat interval: read the nodes announced in the DHT
    → SIGINT/SIGTERM stops

The bound ports (and the DHT peer's addresses) are written to state_dir/ports.json (useful with port
0, as tests and the demo use).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import grpc

from swarmgrpo.coordinator import runlog, status
from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.coordinator.scoring import Scorer
from swarmgrpo.coordinator.service import CoordinatorService, Run
from swarmgrpo.coordinator.store import Store
from swarmgrpo.core.errors import UserError
from swarmgrpo.p2p.host import PeerHost, nodes_key
from swarmgrpo.protocol.dhtrecords import verify_node_record

log = logging.getLogger("swarmgrpo.coordinator")
MAX_REPLY_BYTES = 64 * 1024 * 1024


WEB = Path(__file__).with_name("web")
PAGES = {  # path -> (file, content type): the dashboard, a page with no outside assets
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
# A version number SQLite can hold: ASCII digits only (str.isdigit takes "١٢" too), 18 at most.
SINCE = re.compile(r"[0-9]{1,18}")
# Scripts and styles from this server only: no inline script, so text a node reports could never run.
CSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"


def signed_records(run_id: str, found: dict, store: Store) -> dict[str, dict]:
    """The node records in the DHT that the node they name signed (`protocol.dhtrecords`); anyone can
    store a record there, so the others are dropped, and counted in one log line."""
    shown, dropped = {}, {}
    for node_id, value in found.items():
        key = store.node_key(node_id) if len(node_id) == 32 else None
        record, why = verify_node_record(run_id, node_id, value, key)
        if record is None:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            shown[node_id] = record
    if dropped:
        log.info("ignored %d unsigned or forged node records in the DHT: %s", sum(dropped.values()), dropped)
    return shown


def _http_server(cfg: RunConfig, db_path: Path, dht: dict, run: dict) -> ThreadingHTTPServer:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if not hasattr(local, "store"):
                local.store = Store(db_path, readonly=True)
            path, _, query = self.path.partition("?")
            if path == "/status" or path.startswith("/runlog/"):
                key, what, e_g = (
                    ("since", "a version", "/status?since=12")
                    if path == "/status"
                    else ("after", "a row", "/runlog/rollouts?after=12")
                )
                after = parse_qs(query).get(key, ["0"])[-1]
                if not SINCE.fullmatch(after):
                    # not echoed: a decoded %0d%0a in it would end the status line
                    self.send_error(400, f"{key} must be {what} number (1 to 18 digits 0-9), e.g. {e_g}")
                    return
                if path == "/status":
                    snap = status.snapshot(local.store, cfg.heartbeat_interval_s, dht, run, since=int(after))
                elif path.removeprefix("/runlog/") in runlog.PAGE_ROWS:
                    snap = runlog.page(local.store, path.removeprefix("/runlog/"), int(after))
                else:
                    self.send_error(404, f"the run log's tables are {', '.join(runlog.PAGE_ROWS)}")
                    return
                body = json.dumps(snap, indent=1, allow_nan=False).encode()
                ctype = "application/json"
            elif path == "/metrics":
                body, ctype = (
                    status.metrics_text(local.store, cfg.heartbeat_interval_s, dht),
                    "text/plain; version=0.0.4",
                )
            elif path in PAGES:
                name, ctype = PAGES[path]
                body = (WEB / name).read_bytes()
            else:
                self.send_error(404, "try / (the dashboard), /status, /runlog/<table> or /metrics")
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host, port = cfg.http_listen.rsplit(":", 1)
    return ThreadingHTTPServer((host, int(port)), Handler)


async def serve(cfg: RunConfig, ready: asyncio.Event | None = None) -> None:
    state = Path(cfg.state_dir)
    db_path = state / "run.sqlite"
    resumed = db_path.exists()
    store = Store(db_path)
    stored_run = store.get_meta("run_id")
    if stored_run is not None and stored_run != cfg.run_id:
        raise UserError(
            f"{db_path} holds run '{stored_run}', the config says '{cfg.run_id}'; "
            "use another state_dir for a new run or the same run_id to resume"
        )
    run = Run(cfg)
    scorer = Scorer(run.reward, cfg.score_cpu_budget_s)  # forked now: no thread has started yet
    host, dht = None, {}  # dht: the view /status shows, refreshed in place by the loop below
    if cfg.dht_listen:
        host = await asyncio.to_thread(PeerHost, cfg.dht_listen)
        await asyncio.to_thread(host.join_dht, cfg.dht_initial_peers)
        dht.update(peer_id=host.peer_id, addrs=host.addrs, announced={})
    summary = status.run_summary(cfg)  # one for the gRPC Status call and the HTTP side
    service = CoordinatorService(
        cfg,
        store,
        run,
        scorer,
        status_fn=lambda: status.snapshot(store, cfg.heartbeat_interval_s, dht, summary),
        dht_addrs=host.addrs if host else [],
    )
    server = grpc.aio.server(
        options=[
            # the largest valid request: grpc refuses a longer one before Python sees it
            ("grpc.max_receive_message_length", service.gate.max_receive_bytes),
            ("grpc.max_send_message_length", MAX_REPLY_BYTES),
        ]
    )
    server.add_generic_rpc_handlers((service.gate.handler(service),))
    grpc_port = server.add_insecure_port(cfg.listen)
    if grpc_port == 0:
        raise UserError(
            f"cannot listen on {cfg.listen}: is another coordinator using it? Set listen to a free port"
        )
    await server.start()
    ports = {"grpc": f"{cfg.listen.rsplit(':', 1)[0]}:{grpc_port}"}
    http = None
    if cfg.http_listen:
        http = _http_server(cfg, db_path, dht, summary)
        threading.Thread(target=http.serve_forever, daemon=True, name="http").start()
        ports["http"] = f"{http.server_address[0]}:{http.server_address[1]}"
    if host is not None:
        ports["dht"] = host.addrs
    (state / "ports.json").write_text(json.dumps(ports))
    log.info(
        "coordinator %s run '%s' at policy version %d: gRPC %s, HTTP %s",
        "resumed" if resumed else "started",
        cfg.run_id,
        store.policy_version,
        ports["grpc"],
        ports.get("http", "off"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    refreshed = 0.0
    try:
        while not stop.is_set():
            service.expire_leases()
            service.replay.expire()
            service.publish_if_complete()
            if host is not None and loop.time() - refreshed >= cfg.heartbeat_interval_s:
                refreshed = loop.time()
                try:
                    found = await asyncio.to_thread(host.lookup, nodes_key(cfg.run_id))
                    dht["announced"] = signed_records(cfg.run_id, found, store)
                except Exception as e:  # the DHT view is informational; the run goes on without it
                    log.warning("reading the DHT failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await server.stop(grace=2.0)
        if host is not None:
            await asyncio.to_thread(host.close)
        if http is not None:
            http.shutdown()
        scorer.close()
        store.close()
        log.info("coordinator stopped; state is in %s", db_path)


def main(cfg: RunConfig) -> None:
    asyncio.run(serve(cfg))
