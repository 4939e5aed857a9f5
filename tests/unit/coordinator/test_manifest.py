"""A version's manifest (what its workers agree on besides the weight hash): checked on the wire,
stored with the version, and kept by a database from before it (a coordinator upgraded mid-run opens
its old database: its versions stay, new ones record every field)."""

import hashlib
import sqlite3

import pytest

from swarmgrpo.coordinator.store import MANIFEST, Store
from swarmgrpo.protocol import swarm_pb2, validate
from swarmgrpo.protocol.signing import NodeKey
from swarmgrpo.protocol.validate import InvalidRequest

SHA = hashlib.sha256(b"state").hexdigest()
LIMITS = validate.Limits(vocab_size=100, group_size=2, max_completion_length=8)


def test_a_state_hash_that_is_not_a_sha256_is_refused_by_name():
    key = NodeKey.generate()
    good = swarm_pb2.StepReport(step=1, weight_hash=SHA, weight_bytes=10, state_hash=SHA, state_bytes=20)
    validate.step_report(key.sign("ReportStep", good), LIMITS)
    bad = swarm_pb2.StepReport(step=1, weight_hash=SHA, state_hash="ab" * 16)
    with pytest.raises(InvalidRequest) as e:
        validate.step_report(key.sign("ReportStep", bad), LIMITS)
    assert e.value.field == "state_hash"


def _database_from_before_the_manifest(tmp_path):
    """A run database whose versions table is as it was before weight_hash_fp8 and the manifest
    fields, holding version 1 (hash SHA)."""
    path = tmp_path / "run.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE versions (version INTEGER PRIMARY KEY, weight_hash TEXT NOT NULL, "
            "node_id TEXT NOT NULL, published_at REAL NOT NULL, metrics TEXT NOT NULL)"
        )
        db.execute("INSERT INTO versions VALUES (1, ?, 'n', 0.0, '{}')", (SHA,))
    return path


def test_an_old_database_gains_the_fp8_hash_and_keeps_its_versions(tmp_path):
    store = Store(_database_from_before_the_manifest(tmp_path))
    try:
        assert store.version_hashes(1) == (SHA, "")
        store.add_version(2, SHA, "n", {}, weight_hash_fp8=SHA[::-1])
        assert store.version_hashes(2) == (SHA, SHA[::-1])
        assert store.version_hashes(3) == ("", "")
    finally:
        store.close()


def test_the_manifest_is_stored_with_the_version_and_an_old_database_gains_its_columns(tmp_path):
    store = Store(_database_from_before_the_manifest(tmp_path))
    try:
        assert store.version_manifest(1) == {
            "weight_hash": SHA,
            **dict.fromkeys(MANIFEST, 0),
            "weight_hash_fp8": "",
            "state_hash": "",
        }
        manifest = {
            "weight_hash_fp8": "",
            "weight_bytes": 6441672,
            "weight_bytes_fp8": 0,
            "state_hash": SHA,
            "state_bytes": 9,
        }
        store.add_version(2, SHA, "n", {}, **manifest)
        assert store.version_manifest(2) == {"weight_hash": SHA, **manifest}
        assert swarm_pb2.PolicyState(policy_version=2, **store.version_manifest(2)).state_bytes == 9
        assert store.version_manifest(3) == {}
        with pytest.raises(ValueError, match="not a version manifest field: \\['weight_size'\\]"):
            store.add_version(3, SHA, "n", {}, weight_size=1)
    finally:
        store.close()
