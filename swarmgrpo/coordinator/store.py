"""The coordinator's durable state: one SQLite database in WAL mode.

Every change that answers a node's request is committed (synchronous=FULL) before the answer is
sent, so a coordinator killed with `kill -9` and restarted on the same folder has every rollout it
ever called accepted, every published version and every node's counts. Open leases survive too;
their deadlines keep running while the coordinator is down.

Tables: meta (run id, config, policy version, prompt stream position), nodes, prompts (the seeded
stream's items as they are first issued, and whether each is in the pool, leased or done), leases,
rollouts (accepted groups and the step that consumed them), versions, nonces (replay guard).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from swarmgrpo.trainer.rollouts import StoredRollout, completions_column

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, capabilities TEXT NOT NULL, roles TEXT NOT NULL,
    peer_id TEXT NOT NULL, peer_addrs TEXT NOT NULL, software TEXT NOT NULL,
    joined_at REAL NOT NULL, last_seen REAL NOT NULL, left_at REAL,
    policy_version INTEGER NOT NULL DEFAULT 0, activity TEXT NOT NULL DEFAULT '', tokens_per_s REAL NOT NULL DEFAULT 0,
    tokens_generated INTEGER NOT NULL DEFAULT 0, rollouts_accepted INTEGER NOT NULL DEFAULT 0,
    steps_trained INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_index INTEGER PRIMARY KEY, example TEXT NOT NULL, token_ids TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pool', 'leased', 'done'))
);
CREATE INDEX IF NOT EXISTS prompts_pool ON prompts (state, prompt_index);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, policy_version INTEGER NOT NULL,
    prompt_indices TEXT NOT NULL, seed INTEGER NOT NULL, issued_at REAL NOT NULL, deadline REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'submitted', 'expired', 'returned', 'stale'))
);
CREATE INDEX IF NOT EXISTS leases_open ON leases (state, deadline);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, prompt_index INTEGER NOT NULL, lease_id TEXT NOT NULL,
    node_id TEXT NOT NULL, policy_version INTEGER NOT NULL, completions TEXT NOT NULL, rewards TEXT NOT NULL,
    num_tokens INTEGER NOT NULL, accepted_at REAL NOT NULL,
    step INTEGER, dropped INTEGER NOT NULL DEFAULT 0, set_aside INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rollouts_unused ON rollouts (step, dropped, id);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, weight_hash TEXT NOT NULL, node_id TEXT NOT NULL,
    published_at REAL NOT NULL, metrics TEXT NOT NULL, weight_hash_fp8 TEXT NOT NULL DEFAULT '',
    weight_bytes INTEGER NOT NULL DEFAULT 0, weight_bytes_fp8 INTEGER NOT NULL DEFAULT 0,
    state_hash TEXT NOT NULL DEFAULT '', state_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nonces (node_id TEXT NOT NULL, nonce TEXT NOT NULL, seen_at REAL NOT NULL,
    PRIMARY KEY (node_id, nonce));
"""

# Columns added to `versions` after its first release: (name, type with default), for old databases.
VERSION_COLUMNS = {
    "weight_hash_fp8": "TEXT NOT NULL DEFAULT ''",
    "weight_bytes": "INTEGER NOT NULL DEFAULT 0",
    "weight_bytes_fp8": "INTEGER NOT NULL DEFAULT 0",
    "state_hash": "TEXT NOT NULL DEFAULT ''",
    "state_bytes": "INTEGER NOT NULL DEFAULT 0",
}
# What the workers of a step agree on besides the weight hash (PolicyState fields of the same names).
MANIFEST = ("weight_hash_fp8", "weight_bytes", "weight_bytes_fp8", "state_hash", "state_bytes")


@dataclass(frozen=True)
class Lease:
    lease_id: str
    node_id: str
    policy_version: int
    prompt_indices: list[int]
    seed: int
    deadline: float
    state: str


class Store:
    def __init__(self, path: str | Path, readonly: bool = False):
        path = Path(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A database written before a column existed gets it, with its default (runs resume)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(versions)")}
        for column, kind in VERSION_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE versions ADD COLUMN {column} {kind}")
        if "set_aside" not in {row[1] for row in self.db.execute("PRAGMA table_info(rollouts)")}:
            self.db.execute("ALTER TABLE rollouts ADD COLUMN set_aside INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ transactions and meta

    def tx(self):
        """`with store.tx():` one atomic, durable change."""
        return _Tx(self.db)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def policy_version(self) -> int:
        return int(self.get_meta("policy_version", "0"))

    # ------------------------------------------------------------------ nodes

    def upsert_node(
        self, node_id, public_key, capabilities: dict, roles, peer_id, peer_addrs, software
    ) -> None:
        now = time.time()
        self.db.execute(
            """INSERT INTO nodes (node_id, public_key, capabilities, roles, peer_id, peer_addrs, software,
                                  joined_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (node_id) DO UPDATE SET capabilities = excluded.capabilities,
                 roles = excluded.roles, peer_id = excluded.peer_id, peer_addrs = excluded.peer_addrs,
                 software = excluded.software, last_seen = excluded.last_seen, left_at = NULL,
                 policy_version = 0""",
            (
                node_id,
                public_key,
                json.dumps(capabilities),
                json.dumps(roles),
                peer_id,
                json.dumps(peer_addrs),
                software,
                now,
                now,
            ),
        )

    def node_key(self, node_id: str) -> bytes | None:
        row = self.db.execute("SELECT public_key FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return row[0] if row else None

    def node_roles(self, node_id: str) -> list[str]:
        """The roles the coordinator granted the node ([] for an unknown node)."""
        row = self.db.execute("SELECT roles FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return json.loads(row[0]) if row else []

    def touch_node(self, node_id: str, **fields) -> None:
        """Update a node's row. Its policy_version only moves forward between joins: a heartbeat
        sent before a gradient worker learnt that its step was published must not take it back
        (the next step's team would leave it out)."""
        fields["last_seen"] = time.time()
        cols = ", ".join(
            "policy_version = MAX(policy_version, ?)" if k == "policy_version" else f"{k} = ?" for k in fields
        )
        self.db.execute(f"UPDATE nodes SET {cols} WHERE node_id = ?", (*fields.values(), node_id))

    def add_counts(self, node_id: str, tokens: int = 0, rollouts: int = 0, steps: int = 0) -> None:
        self.db.execute(
            """UPDATE nodes SET tokens_generated = tokens_generated + ?, rollouts_accepted = rollouts_accepted + ?,
               steps_trained = steps_trained + ? WHERE node_id = ?""",
            (tokens, rollouts, steps, node_id),
        )

    def nodes(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM nodes ORDER BY joined_at")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            node = dict(zip(names, row, strict=True))
            node.pop("public_key")
            for k in ("capabilities", "roles", "peer_addrs"):
                node[k] = json.loads(node[k])
            out.append(node)
        return out

    # ------------------------------------------------------------------ nonces

    def remember_nonce(self, node_id: str, nonce: int, now: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?, ?)", (node_id, str(nonce), now))

    def forget_nonces(self, before: float) -> None:
        """Nonces seen before `before` are past the clock window: their requests are refused anyway."""
        self.db.execute("DELETE FROM nonces WHERE seen_at < ?", (before,))

    def recent_nonces(self, since: float) -> dict[tuple[str, int], float]:
        self.forget_nonces(since)
        rows = self.db.execute("SELECT node_id, nonce, seen_at FROM nonces").fetchall()
        return {(n, int(x)): t for n, x, t in rows}

    def nonce_counts(self, limit: int) -> tuple[int, dict[str, int]]:
        """(nonces held, how many of them each node sent: the `limit` nodes with the most)."""
        total = self.db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
        rows = self.db.execute(
            "SELECT node_id, COUNT(*) AS n FROM nonces GROUP BY node_id ORDER BY n DESC LIMIT ?", (limit,)
        )
        return total, dict(rows.fetchall())

    # ------------------------------------------------------------------ prompts and leases

    def add_prompt(self, index: int, example: dict, token_ids: list[int]) -> None:
        self.db.execute(
            "INSERT INTO prompts VALUES (?, ?, ?, 'pool')",
            (index, json.dumps(example), json.dumps(token_ids)),
        )

    def pool_prompts(self, n: int) -> list[int]:
        rows = self.db.execute(
            "SELECT prompt_index FROM prompts WHERE state = 'pool' ORDER BY prompt_index LIMIT ?", (n,)
        )
        return [r[0] for r in rows]

    def prompt(self, index: int) -> tuple[dict, list[int]]:
        ex, ids = self.db.execute(
            "SELECT example, token_ids FROM prompts WHERE prompt_index = ?", (index,)
        ).fetchone()
        return json.loads(ex), json.loads(ids)

    def set_prompt_state(self, indices: list[int], state: str) -> None:
        self.db.executemany(
            "UPDATE prompts SET state = ? WHERE prompt_index = ?", [(state, i) for i in indices]
        )

    def add_lease(self, lease: Lease) -> None:
        self.db.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                lease.lease_id,
                lease.node_id,
                lease.policy_version,
                json.dumps(lease.prompt_indices),
                lease.seed,
                time.time(),
                lease.deadline,
                lease.state,
            ),
        )
        self.set_prompt_state(lease.prompt_indices, "leased")

    def lease(self, lease_id: str) -> Lease | None:
        row = self.db.execute(
            "SELECT lease_id, node_id, policy_version, prompt_indices, seed, deadline, state FROM leases WHERE lease_id = ?",
            (lease_id,),
        ).fetchone()
        if row is None:
            return None
        return Lease(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])

    def close_lease(self, lease: Lease, state: str, done: list[int]) -> None:
        """Mark the lease `state`; its prompts in `done` are done, the rest go back to the pool."""
        self.db.execute("UPDATE leases SET state = ? WHERE lease_id = ?", (state, lease.lease_id))
        self.set_prompt_state(done, "done")
        self.set_prompt_state([i for i in lease.prompt_indices if i not in set(done)], "pool")

    def open_leases(self, node_id: str | None = None, expired_by: float | None = None) -> list[Lease]:
        sql, args = "SELECT lease_id FROM leases WHERE state = 'open'", []
        if node_id is not None:
            sql, args = sql + " AND node_id = ?", [*args, node_id]
        if expired_by is not None:
            sql, args = sql + " AND deadline < ?", [*args, expired_by]
        return [self.lease(r[0]) for r in self.db.execute(sql, args).fetchall()]

    def expired_lease_counts(self) -> dict[str, int]:
        """Node id -> how many of its leases expired unsubmitted."""
        rows = self.db.execute(
            "SELECT node_id, COUNT(*) FROM leases WHERE state = 'expired' GROUP BY node_id"
        )
        return dict(rows.fetchall())

    def leased_prompt_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM prompts WHERE state = 'leased'").fetchone()[0]

    # ------------------------------------------------------------------ rollouts and steps

    def add_rollout(self, prompt_index, lease_id, node_id, version, completions, logprobs, rewards) -> None:
        self.db.execute(
            """INSERT INTO rollouts (prompt_index, lease_id, node_id, policy_version, completions, rewards,
               num_tokens, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                prompt_index,
                lease_id,
                node_id,
                version,
                completions_column(completions, logprobs),
                json.dumps(rewards),
                sum(len(c) for c in completions),
                time.time(),
            ),
        )

    def unused_rollouts(self, min_version: int) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM rollouts WHERE step IS NULL AND dropped = 0 AND policy_version >= ?",
            (min_version,),
        ).fetchone()[0]

    def drop_stale(self, min_version: int) -> list[int]:
        """Unused rollouts sampled before `min_version` can no longer be trained on: drop them and
        return their prompts to the pool (they will be sampled again by a fresher policy)."""
        rows = self.db.execute(
            "SELECT id, prompt_index FROM rollouts WHERE step IS NULL AND dropped = 0 AND policy_version < ?",
            (min_version,),
        ).fetchall()
        self.db.executemany("UPDATE rollouts SET dropped = 1 WHERE id = ?", [(r[0],) for r in rows])
        self.set_prompt_state([r[1] for r in rows], "pool")
        return [r[1] for r in rows]

    def assign_batch(self, step: int, n: int, min_version: int) -> list[int]:
        rows = self.db.execute(
            """SELECT id FROM rollouts WHERE step IS NULL AND dropped = 0 AND policy_version >= ?
               ORDER BY id LIMIT ?""",
            (min_version, n),
        ).fetchall()
        self.db.executemany("UPDATE rollouts SET step = ? WHERE id = ?", [(step, r[0]) for r in rows])
        return [r[0] for r in rows]

    def unassign(self, rollout_ids: list[int]) -> None:
        """Rollouts of a batch that were not trained (their gradient worker was dropped): back to the
        unused pool, for a later step (or dropped there as stale, like any other)."""
        self.db.executemany("UPDATE rollouts SET step = NULL WHERE id = ?", [(r,) for r in rollout_ids])

    def has_batch(self, step: int) -> bool:
        return (
            self.db.execute("SELECT 1 FROM rollouts WHERE step = ? LIMIT 1", (step,)).fetchone() is not None
        )

    def batch(self, step: int) -> list[StoredRollout]:
        rows = self.db.execute(
            "SELECT id, prompt_index, policy_version, completions, rewards FROM rollouts WHERE step = ? ORDER BY id",
            (step,),
        ).fetchall()
        return [StoredRollout.from_columns(*row) for row in rows]

    def set_aside(self, step: int, prompt_indices: list[int]) -> dict[str, list[int]]:
        """Record that a trainer set aside the step's rollouts of these prompts (their loss or gradient
        was not finite); returns the prompts of the batch by the node that submitted them."""
        marks = ",".join("?" * len(prompt_indices))
        rows = self.db.execute(
            f"SELECT id, prompt_index, node_id FROM rollouts WHERE step = ? AND prompt_index IN ({marks})",
            (step, *prompt_indices),
        ).fetchall()
        self.db.executemany("UPDATE rollouts SET set_aside = 1 WHERE id = ?", [(r[0],) for r in rows])
        by_node: dict[str, list[int]] = {}
        for _, index, node_id in rows:
            by_node.setdefault(node_id, []).append(index)
        return by_node

    def add_version(self, version: int, weight_hash: str, node_id: str, metrics: dict, **manifest) -> None:
        """`manifest`: any of MANIFEST (the rest keep their defaults)."""
        unknown = set(manifest) - set(MANIFEST)
        if unknown:
            raise ValueError(f"not a version manifest field: {sorted(unknown)}")
        columns = ["version", "weight_hash", "node_id", "published_at", "metrics", *manifest]
        values = [version, weight_hash, node_id, time.time(), json.dumps(metrics), *manifest.values()]
        self.db.execute(
            f"INSERT INTO versions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
        )
        self.set_meta("policy_version", version)

    def version_manifest(self, version: int) -> dict:
        """A version's MANIFEST fields (its weight_hash too); {} if the version is unknown."""
        names = ("weight_hash", *MANIFEST)
        row = self.db.execute(
            f"SELECT {', '.join(names)} FROM versions WHERE version = ?", (version,)
        ).fetchone()
        return dict(zip(names, row, strict=True)) if row else {}

    def version_hashes(self, version: int) -> tuple[str, str]:
        """(transfer-encoding sha256, block-FP8 sha256 or "") of a version; ("", "") if unknown."""
        row = self.db.execute(
            "SELECT weight_hash, weight_hash_fp8 FROM versions WHERE version = ?", (version,)
        ).fetchone()
        return (row[0], row[1]) if row else ("", "")

    def versions(self, since: int = 0) -> list[dict]:
        """The published versions after `since`, oldest first."""
        rows = self.db.execute(
            "SELECT version, weight_hash, node_id, published_at, metrics FROM versions WHERE version > ? "
            "ORDER BY version",
            (since,),
        )
        return [
            {"version": v, "weight_hash": h, "node_id": n, "published_at": t, "metrics": json.loads(m)}
            for v, h, n, t, m in rows.fetchall()
        ]

    def counts(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "prompts_issued": q("SELECT COUNT(*) FROM prompts"),
            "rollouts_accepted": q("SELECT COUNT(*) FROM rollouts"),
            "rollouts_trained": q("SELECT COUNT(*) FROM rollouts WHERE step IS NOT NULL"),
            "rollouts_dropped_stale": q("SELECT COUNT(*) FROM rollouts WHERE dropped = 1"),
            "rollouts_set_aside": q("SELECT COUNT(*) FROM rollouts WHERE set_aside = 1"),
            "leases_open": q("SELECT COUNT(*) FROM leases WHERE state = 'open'"),
            "leases_expired": q("SELECT COUNT(*) FROM leases WHERE state = 'expired'"),
            "leases_submitted": q("SELECT COUNT(*) FROM leases WHERE state = 'submitted'"),
            "versions_published": q("SELECT COUNT(*) FROM versions"),
            "tokens_accepted": q("SELECT COALESCE(SUM(num_tokens), 0) FROM rollouts"),
        }


class _Tx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
