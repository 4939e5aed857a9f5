"""The coordinator's public read API: what /status adds for readers who used to open the database
(the counts, the replay guard's nonces) and the /runlog pages of versions, leases, rollouts and
completions, bounded and paged. A real Store in tmp_path; one test serves them over loopback HTTP."""

import threading
import time
import urllib.error
from types import SimpleNamespace

import pytest

from swarmgrpo.coordinator import runlog, status
from swarmgrpo.coordinator.server import _http_server
from swarmgrpo.coordinator.store import Lease, Store

ROLLOUT, TRAINER = "a" * 32, "b" * 32


def _node(store: Store, node_id: str, roles: list[str]) -> None:
    store.upsert_node(node_id, b"k" * 32, {"device": "cpu"}, roles, "peer", [], "test")


def _lease(store: Store, lease_id: str, prompts: list[int], node_id: str = ROLLOUT) -> Lease:
    for i in prompts:
        store.add_prompt(i, {"text": f"p{i}"}, [i, i + 1])
    lease = Lease(lease_id, node_id, 0, prompts, 7, time.time() + 60, "open")
    store.add_lease(lease)
    return lease


@pytest.fixture
def store(tmp_path):
    """Two nodes; lease L1 submitted (prompts 0 and 1), L2 open; step 0 trained on both rollouts,
    prompt 1's set aside; version 1 published with an infinite metric; the rollout node's 3 nonces."""
    s = Store(tmp_path / "run.sqlite")
    _node(s, ROLLOUT, ["ROLE_ROLLOUT"])
    _node(s, TRAINER, ["ROLE_TRAIN"])
    first = _lease(s, "L1", [0, 1])
    for i in (0, 1):
        s.add_rollout(i, "L1", ROLLOUT, 0, [[5, 6], [7]], [[-0.5, -1.0], [-2.0]], [1.0, 0.0])
    s.close_lease(first, "submitted", [0, 1])
    _lease(s, "L2", [2])
    s.assign_batch(0, 2, 0)
    s.set_aside(0, [1])
    s.add_version(1, "h" * 64, TRAINER, {"loss": 0.5, "grad_norm": float("inf")}, weight_hash_fp8="f" * 64)
    for nonce in range(3):
        s.remember_nonce(ROLLOUT, nonce, time.time())
    yield s
    s.close()


def test_status_counts_what_the_run_did(store):
    snap = status.snapshot(store, heartbeat_interval_s=1.0)
    counts = snap["counts"]
    assert counts["versions_published"] == 1 and snap["policy_version"] == 1
    assert counts["rollouts_accepted"] == counts["rollouts_trained"] == 2
    assert counts["rollouts_set_aside"] == 1
    assert counts["leases_submitted"] == 1 and counts["leases_open"] == 1
    assert snap["nonces"] == {"held": 3, "by_node": {ROLLOUT: 3}}
    assert {n["node_id"]: n["roles"] for n in snap["nodes"]} == {
        ROLLOUT: ["ROLE_ROLLOUT"],
        TRAINER: ["ROLE_TRAIN"],
    }
    assert snap["steps"] == [{"version": 1, "loss": 0.5, "grad_norm": None}]  # JSON has no Infinity


def test_status_lists_the_nodes_holding_most_nonces_and_counts_them_all(tmp_path):
    store = Store(tmp_path / "run.sqlite")
    now = time.time()
    for i in range(status.MAX_NODES_SHOWN + 20):
        for nonce in range(1 + (i == 7)):
            store.remember_nonce(f"{i:032x}", nonce, now)
    nonces = status.snapshot(store, 1.0)["nonces"]
    assert nonces["held"] == status.MAX_NODES_SHOWN + 21
    assert len(nonces["by_node"]) == status.MAX_NODES_SHOWN
    assert next(iter(nonces["by_node"].items())) == (f"{7:032x}", 2)


def test_a_runlog_page_holds_the_rows_of_its_table(store):
    (version,) = runlog.page(store, "versions")["rows"]
    assert version["version"] == 1 and version["node_id"] == TRAINER and version["published_at"] > 0
    assert version["weight_hash"] == "h" * 64 and version["weight_hash_fp8"] == "f" * 64
    assert version["metrics"] == {"loss": 0.5, "grad_norm": None}
    leases = runlog.page(store, "leases")["rows"]
    assert [(x["lease_id"], x["state"], x["prompt_indices"], x["tokens"]) for x in leases] == [
        ("L1", "submitted", [0, 1], 6),
        ("L2", "open", [2], 0),
    ]
    assert leases[0]["accepted_at"] >= leases[0]["issued_at"] and leases[1]["accepted_at"] is None
    assert "seed" not in leases[0]
    rollouts = runlog.page(store, "rollouts")["rows"]
    assert [(r["prompt_index"], r["step"], r["set_aside"], r["dropped"]) for r in rollouts] == [
        (0, 0, False, False),
        (1, 0, True, False),
    ]
    assert rollouts[0]["rewards"] == [1.0, 0.0] and rollouts[0]["node_id"] == ROLLOUT
    assert rollouts[0]["lease_id"] == "L1" and rollouts[0]["num_tokens"] == 3
    completion = runlog.page(store, "completions")["rows"][1]
    assert completion == {
        "id": rollouts[1]["id"],
        "prompt_index": 1,
        "policy_version": 0,
        "prompt_token_ids": [1, 2],
        "token_ids": [[5, 6], [7]],
        "logprobs": [[-0.5, -1.0], [-2.0]],
    }


def test_a_runlog_page_is_cut_at_its_table_s_limit_and_names_the_next(store):
    for i in range(3, 3 + runlog.PAGE_ROWS["completions"] + 1):
        store.add_prompt(i, {}, [i])
        store.add_rollout(i, "L1", ROLLOUT, 0, [[i]], [[-1.0]], [0.0])
    first = runlog.page(store, "completions")
    assert len(first["rows"]) == runlog.PAGE_ROWS["completions"]
    assert first["next"] == first["rows"][-1]["id"]
    rest = runlog.page(store, "completions", first["next"])
    assert len(rest["rows"]) == 2 + 9 - runlog.PAGE_ROWS["completions"] and rest["next"] is None
    assert rest["rows"][0]["id"] == first["next"] + 1
    with pytest.raises(KeyError):
        runlog.page(store, "nonces")


def test_the_http_side_serves_status_and_every_page_and_refuses_the_rest(store, tmp_path, monkeypatch):
    monkeypatch.setitem(runlog.PAGE_ROWS, "rollouts", 1)  # two rollouts: two pages and the empty third
    server = _http_server(
        SimpleNamespace(http_listen="127.0.0.1:0", heartbeat_interval_s=1.0), tmp_path / "run.sqlite", {}, {}
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http = f"127.0.0.1:{server.server_address[1]}"
    try:
        assert runlog.read_status(http)["counts"]["rollouts_set_aside"] == 1
        assert runlog.read_status(http, since=1)["steps"] == []
        assert [r["prompt_index"] for r in runlog.read_table(http, "rollouts")] == [0, 1]
        assert [r["prompt_index"] for r in runlog.read_table(http, "rollouts", after=1)] == [1]
        for path, code, says in [
            ("/runlog/nonces", 404, "the run log's tables are versions, leases, rollouts, completions"),
            ("/runlog/rollouts?after=-1", 400, "after must be a row number"),
            ("/runlog/rollouts?after=%D9%A1", 400, "after must be a row number"),
        ]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                runlog.get_json(http, path)
            assert refused.value.code == code and says in refused.value.read().decode(), path
    finally:
        server.shutdown()
        server.server_close()
