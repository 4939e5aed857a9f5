"""The run's history, a page at a time: `GET /runlog/<table>?after=N` on the coordinator's HTTP side,
and the client that reads it (tests, benchmarks, anyone who watches a run). /status says where the
run is now and stays small; this is what it did, for a reader who needs every row.

    versions     version, weight_hash, node_id (who published it), published_at, metrics and the
                 manifest (weight_hash_fp8, weight_bytes, weight_bytes_fp8, state_hash, state_bytes)
    leases       lease_id, node_id, policy_version, prompt_indices, issued_at, deadline, state, and of
                 its accepted rollouts: accepted_at (the last one's, null if none) and tokens (their sum)
    rollouts     id, prompt_index, lease_id, node_id, policy_version, step (null until a batch takes
                 it), dropped (stale), set_aside (by its trainer), rewards, num_tokens, accepted_at
    completions  id, prompt_index, policy_version, prompt_token_ids, token_ids and logprobs of each
                 completion: the large rows, so a few a page

A page holds at most PAGE_ROWS[table] rows, oldest first, after the row `after` (a version, a lease's
sequence number, a rollout id): {"table", "after", "rows", "next"}, where `next` is the `after` of
the following page and null on the last one. Nothing secret is in them: a lease id is worth nothing
without its node's key. The store owns the schema; this module only reads it.
"""

from __future__ import annotations

import json
import urllib.request

from swarmgrpo.coordinator.status import finite
from swarmgrpo.coordinator.store import MANIFEST, Store

PAGE_ROWS = {"versions": 100, "leases": 200, "rollouts": 200, "completions": 8}

_VERSION_COLUMNS = ("version", "weight_hash", "node_id", "published_at", "metrics", *MANIFEST)
_QUERIES = {  # table -> (SQL over rows after ?, at most ?, whose first column is the page key)
    "versions": f"SELECT version, {', '.join(_VERSION_COLUMNS)} FROM versions WHERE version > ? "
    "ORDER BY version LIMIT ?",
    "leases": "SELECT l.rowid, l.lease_id, l.node_id, l.policy_version, l.prompt_indices, l.issued_at, "
    "l.deadline, l.state, MAX(r.accepted_at), COALESCE(SUM(r.num_tokens), 0) FROM leases l "
    "LEFT JOIN rollouts r ON r.lease_id = l.lease_id WHERE l.rowid > ? GROUP BY l.rowid "
    "ORDER BY l.rowid LIMIT ?",
    "rollouts": "SELECT id, id, prompt_index, lease_id, node_id, policy_version, step, dropped, set_aside, "
    "rewards, num_tokens, accepted_at FROM rollouts WHERE id > ? ORDER BY id LIMIT ?",
    "completions": "SELECT r.id, r.id, r.prompt_index, r.policy_version, p.token_ids, r.completions "
    "FROM rollouts r JOIN prompts p ON p.prompt_index = r.prompt_index WHERE r.id > ? ORDER BY r.id LIMIT ?",
}


def _version(row) -> dict:
    out = dict(zip(_VERSION_COLUMNS, row, strict=True))
    out["metrics"] = json.loads(out["metrics"])
    return out


def _lease(row) -> dict:
    lease_id, node_id, version, prompts, issued, deadline, state, accepted, tokens = row
    return {
        "lease_id": lease_id,
        "node_id": node_id,
        "policy_version": version,
        "prompt_indices": json.loads(prompts),
        "issued_at": issued,
        "deadline": deadline,
        "state": state,
        "accepted_at": accepted,
        "tokens": tokens,
    }


def _rollout(row) -> dict:
    names = ("id", "prompt_index", "lease_id", "node_id", "policy_version", "step", "dropped", "set_aside")
    out = dict(zip(names, row[:8], strict=True))
    out["dropped"], out["set_aside"] = bool(out["dropped"]), bool(out["set_aside"])
    out.update(rewards=json.loads(row[8]), num_tokens=row[9], accepted_at=row[10])
    return out


def _completion(row) -> dict:
    rollout_id, prompt_index, version, prompt, completions = row
    token_ids, logprobs = json.loads(completions)
    return {
        "id": rollout_id,
        "prompt_index": prompt_index,
        "policy_version": version,
        "prompt_token_ids": json.loads(prompt),
        "token_ids": token_ids,
        "logprobs": logprobs,
    }


_ROWS = {"versions": _version, "leases": _lease, "rollouts": _rollout, "completions": _completion}


def page(store: Store, table: str, after: int = 0) -> dict:
    """One page of `table` (a key of PAGE_ROWS; KeyError for another) after the row `after`."""
    limit = PAGE_ROWS[table]
    rows = store.db.execute(_QUERIES[table], (after, limit)).fetchall()
    return finite(
        {
            "table": table,
            "after": after,
            "rows": [_ROWS[table](row[1:]) for row in rows],
            "next": rows[-1][0] if len(rows) == limit else None,
        }
    )


# ---------------------------------------------------------------------- the client


def get_json(http: str, path: str, timeout: float = 30.0):
    """GET http://`http``path` (e.g. "127.0.0.1:8080", "/status") as JSON."""
    with urllib.request.urlopen(f"http://{http}{path}", timeout=timeout) as reply:
        return json.loads(reply.read())


def read_status(http: str, since: int = 0) -> dict:
    """The coordinator's /status (`since`: its "steps" after that version only)."""
    return get_json(http, f"/status?since={since}" if since else "/status")


def read_table(http: str, table: str, after: int = 0) -> list[dict]:
    """Every row of `table` after `after`, page by page."""
    rows, key = [], after
    while key is not None:
        got = get_json(http, f"/runlog/{table}?after={key}")
        rows += got["rows"]
        key = got["next"]
    return rows
