"""The wire layer (swarmgrpo/protocol): signing, the replay guard, field validation, that it imports
nothing heavy, and that the generated stubs match swarm.proto. Hermetic: no sockets, no coordinator."""

import hashlib
import math
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmgrpo.protocol import PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS, swarm_pb2, validate
from swarmgrpo.protocol.signing import AuthError, NodeKey, ReplayGuard, node_id_of, verify
from swarmgrpo.protocol.validate import IncompatibleProtocol, InvalidRequest, Limits

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(vocab_size=100, group_size=2, max_completion_length=5)
LEASED = {7: 0, 8: 0}


@pytest.fixture(scope="module")
def key():
    return NodeKey.generate()


def completion(tokens=(1, 99, 0), logprobs=(-0.1, -2.0, 0.0), reward=1.0):
    return swarm_pb2.Completion(token_ids=tokens, logprobs=logprobs, reported_reward=reward)


def submit_request():
    """Valid for LIMITS and LEASED: two groups of two completions, token 99 and log-prob 0 at the edges."""
    groups = [swarm_pb2.Group(prompt_index=i, completions=[completion(), completion()]) for i in (7, 8)]
    return swarm_pb2.SubmitRequest(lease_id="lease-1", policy_version=3, groups=groups, generation_s=1.5)


def join_request(key, version=PROTOCOL_VERSION):
    caps = swarm_pb2.Capabilities(device="cpu", device_name="test cpu", cpu_cores=4)
    roles = [swarm_pb2.ROLE_ROLLOUT]
    req = swarm_pb2.JoinRequest(protocol_version=version, join_token="t", capabilities=caps, roles=roles)
    return key.sign("Join", req, include_public_key=True)


# ---------------------------------------------------------------- signing


def test_signed_request_verifies(key):
    req = key.sign("Submit", submit_request())
    assert req.auth.node_id == key.node_id == node_id_of(key.public_key)
    assert len(req.auth.signature) == 64 and req.auth.public_key == b""
    verify("Submit", req, key.public_key)


def test_signature_is_the_formula_in_swarm_proto():
    """A signature made by hand from the .proto's formula verifies; another key's over the same bytes does not."""
    private = Ed25519PrivateKey.generate()
    req = NodeKey(private).sign("Lease", swarm_pb2.LeaseRequest(policy_version=2, max_prompts=4))
    unsigned = swarm_pb2.LeaseRequest()
    unsigned.CopyFrom(req)
    unsigned.auth.signature = b""
    payload = b"swarmgrpo/v1|Lease|" + unsigned.SerializeToString(deterministic=True)
    req.auth.signature = private.sign(payload)
    verify("Lease", req, NodeKey(private).public_key)
    req.auth.signature = Ed25519PrivateKey.generate().sign(payload)
    with pytest.raises(AuthError, match="bad signature on Lease"):
        verify("Lease", req, NodeKey(private).public_key)


def apply(stmt, req):
    """Run one mutation, written as the Python statement that pytest shows as the case id, on `r`."""
    exec(stmt, {"nan": math.nan, "inf": math.inf, "completion": completion}, {"r": req})


TAMPERS = [
    "r.groups[0].completions[1].token_ids[2] = 5",
    "r.groups[1].completions[0].logprobs[0] = -0.2",
    "r.policy_version += 1",
    "r.auth.nonce ^= 1",
    "r.auth.timestamp_ms += 1",
    "del r.groups[1]",
    "r.auth.public_key = bytes(32)",
]


@pytest.mark.parametrize("tamper", TAMPERS)
def test_any_change_after_signing_is_refused(key, tamper):
    req = key.sign("Submit", submit_request())
    verify("Submit", req, key.public_key)
    apply(tamper, req)
    with pytest.raises(AuthError, match="bad signature on Submit"):
        verify("Submit", req, key.public_key)


def test_signature_is_bound_to_its_method(key):
    req = key.sign("Lease", swarm_pb2.SubmitRequest(lease_id="x"))
    verify("Lease", req, key.public_key)
    with pytest.raises(AuthError, match="bad signature on Submit"):
        verify("Submit", req, key.public_key)


def test_node_id_must_match_the_key(key):
    other = NodeKey.generate()
    req = key.sign("Lease", swarm_pb2.LeaseRequest(max_prompts=1))
    with pytest.raises(AuthError, match="node_id does not match"):
        verify("Lease", req, other.public_key)
    req.auth.node_id = other.node_id  # claiming the other node's id does not make its key accept ours
    with pytest.raises(AuthError, match="bad signature on Lease"):
        verify("Lease", req, other.public_key)
    with pytest.raises(AuthError, match="32 raw"):
        verify("Lease", req, key.public_key[:31])


def test_key_file_is_private_and_stable(tmp_path):
    path = tmp_path / "state" / "node.key"
    first = NodeKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    again = NodeKey.load_or_create(path)
    assert (again.node_id, again.public_key) == (first.node_id, first.public_key)
    verify("Leave", again.sign("Leave", swarm_pb2.LeaveRequest()), first.public_key)


def test_key_file_is_private_even_over_a_leftover_tmp(tmp_path):
    tmp = tmp_path / "node.tmp"
    tmp.write_bytes(b"left over")
    tmp.chmod(0o644)
    NodeKey.load_or_create(tmp_path / "node.key")
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"not a key", bytes(33)])
def test_corrupt_key_file_names_the_fix_and_is_kept(tmp_path, content):
    path = tmp_path / "node.key"
    path.write_bytes(content)
    with pytest.raises(AuthError, match=r"not a node key.*move it away"):
        NodeKey.load_or_create(path)
    assert path.read_bytes() == content  # an identity is never silently replaced


# ---------------------------------------------------------------- replay guard


def signed_auth(key, now):
    auth = key.sign("Heartbeat", swarm_pb2.HeartbeatRequest()).auth
    auth.timestamp_ms = int(now * 1000)
    return auth


NOW = 1_700_000_000.0


def test_replay_is_refused_per_node_and_nonce(key):
    guard = ReplayGuard(max_skew_s=120)
    auth = signed_auth(key, NOW)
    guard.check(auth, now=NOW)
    with pytest.raises(AuthError, match="replay"):
        guard.check(auth, now=NOW + 1)
    other_node = swarm_pb2.Auth(node_id="f" * 32, nonce=auth.nonce, timestamp_ms=auth.timestamp_ms)
    guard.check(other_node, now=NOW)
    auth.nonce ^= 1
    guard.check(auth, now=NOW)


@pytest.mark.parametrize("skew_s, ok", [(119.0, True), (-119.0, True), (121.0, False), (-121.0, False)])
def test_clock_skew_beyond_the_limit_is_refused(key, skew_s, ok):
    calls = []
    guard = ReplayGuard(max_skew_s=120, persist=lambda *a: calls.append(a))
    auth = signed_auth(key, NOW + skew_s)
    if ok:
        guard.check(auth, now=NOW)
        assert len(calls) == 1
    else:
        with pytest.raises(AuthError) as e:
            guard.check(auth, now=NOW)
        assert f"clock is {skew_s:+.0f} s off" in str(e.value) and "±120 s" in str(e.value)
        assert "NTP" in str(e.value)
        assert calls == []  # a refused request is not remembered


def test_persist_gets_node_nonce_and_time(key):
    calls = []
    guard = ReplayGuard(max_skew_s=120, persist=lambda *a: calls.append(a))
    auth = signed_auth(key, NOW)
    guard.check(auth, now=NOW + 3)
    assert calls == [(key.node_id, auth.nonce, NOW + 3)]
    with pytest.raises(AuthError):
        guard.check(auth, now=NOW + 4)
    assert len(calls) == 1


def test_replay_is_refused_after_a_restart(key):
    db = {}  # what the coordinator's nonce table would hold
    guard = ReplayGuard(max_skew_s=120, persist=lambda node, nonce, t: db.__setitem__((node, nonce), t))
    auth = signed_auth(key, NOW)
    guard.check(auth, now=NOW)
    restarted = ReplayGuard(max_skew_s=120, seen=db)
    with pytest.raises(AuthError, match="replay"):
        restarted.check(auth, now=NOW + 5)
    restarted.check(signed_auth(key, NOW), now=NOW + 5)  # a fresh nonce still goes through


# ---------------------------------------------------------------- validate


def test_valid_submit_passes(key):
    validate.submit(key.sign("Submit", submit_request()), LIMITS, LEASED)
    rare = submit_request()
    rare.groups[0].completions[0].logprobs[0] = -32.2  # at ln(1e-12 / 100 tokens) = -32.24 a draw may land
    validate.submit(key.sign("Submit", rare), LIMITS, LEASED)
    partial = submit_request()
    del partial.groups[0]  # a partial submission returns the rest to the pool
    validate.submit(key.sign("Submit", partial), LIMITS, LEASED)


C00, C01, C10, C11 = (f"groups[{g}].completions[{c}]" for g in (0, 1) for c in (0, 1))
BAD_SUBMITS = [  # (mutation of a valid request, the field its error names, words in the message)
    ("r.groups[0].completions[1].token_ids[0] = 100", f"{C01}.token_ids", "outside the vocabulary (100)"),
    (
        "r.groups[1].completions[0].logprobs[1] = 0.5",
        f"{C10}.logprobs",
        "0.5 is not a sampled token's log-prob",
    ),
    ("r.groups[0].completions[0].logprobs[0] = nan", f"{C00}.logprobs", ": nan is not a sampled"),
    ("r.groups[0].completions[0].logprobs[0] = inf", f"{C00}.logprobs", ": inf is not a sampled"),
    ("r.groups[0].completions[0].logprobs[0] = -inf", f"{C00}.logprobs", ": -inf is not a sampled"),
    ("r.groups[0].completions[0].logprobs[0] = -1e30", f"{C00}.logprobs", "e+30 is not a sampled"),
    ("r.groups[0].completions[0].logprobs[2] = -32.3", f"{C00}.logprobs", "(-32.24..0)"),
    ("r.groups[0].completions[0].logprobs[1] = -50", f"{C00}.logprobs", "-50.0 is not a sampled"),
    ("r.groups[0].completions[1].logprobs.pop()", f"{C01}.logprobs", "2 log-probs for 3 tokens"),
    ("r.groups[1].completions[1].CopyFrom(completion([1]*6, [0]*6))", f"{C11}.token_ids", "6 tokens > "),
    ("r.groups[1].completions.append(completion())", "groups[1].completions", "3 completions, the run's"),
    ("r.groups[0].completions.pop()", "groups[0].completions", "1 completions, the run's group size is 2"),
    ("r.groups[1].prompt_index = 9", "groups[1].prompt_index", "9 is not in this lease"),
    ("r.groups[1].prompt_index = 7", "groups[1].prompt_index", "7 appears twice"),
    ("r.groups.add(prompt_index=9)", "groups", "3 groups for a lease of 2 prompts"),
    ("del r.groups[:]", "groups", "0 groups for a lease of 2 prompts"),
    ("r.groups[0].completions[1].reported_reward = nan", f"{C01}.reported_reward", "must be finite"),
    ("r.generation_s = -1.0", "generation_s", "must be finite and >= 0"),
    ("r.generation_s = nan", "generation_s", "must be finite and >= 0"),
    ("r.lease_id = 'x' * 513", "lease_id", "longer than 512 characters"),
]


@pytest.mark.parametrize("mutation, field, words", BAD_SUBMITS)
def test_bad_submit_names_its_field(key, mutation, field, words):
    req = submit_request()
    apply(mutation, req)
    with pytest.raises(InvalidRequest) as e:
        validate.submit(key.sign("Submit", req), LIMITS, LEASED)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ") and words in str(e.value)


def test_join_checks_protocol_version_and_public_key(key):
    validate.join(join_request(key), LIMITS)
    with pytest.raises(IncompatibleProtocol) as e:
        validate.join(join_request(key, version=999), LIMITS)
    node_part, coordinator_part = str(e.value).split("coordinator", 1)
    assert "999" in node_part and str(sorted(SUPPORTED_PROTOCOL_VERSIONS)) in coordinator_part
    req = join_request(key)
    req.auth.public_key = key.public_key[:31]
    with pytest.raises(InvalidRequest) as e:
        validate.join(req, LIMITS)
    assert e.value.field == "auth.public_key"


@pytest.mark.parametrize("n, ok", [(0, False), (1, True), (64, True), (65, False)])
def test_lease_max_prompts_range(key, n, ok):
    req = key.sign("Lease", swarm_pb2.LeaseRequest(policy_version=0, max_prompts=n))
    if ok:
        validate.lease(req, LIMITS)
        return
    with pytest.raises(InvalidRequest, match=f"must be 1..64, got {n}") as e:
        validate.lease(req, LIMITS)
    assert e.value.field == "max_prompts"


GOOD_HASH = hashlib.sha256(b"weights").hexdigest()


@pytest.mark.parametrize(
    "weight_hash, metrics, field, fp8",
    [
        (GOOD_HASH, {"loss": 0.1, "reward_mean": -1.0}, None, ""),
        (GOOD_HASH, {}, None, GOOD_HASH[::-1]),
        ("g" * 64, {}, "weight_hash", ""),
        (GOOD_HASH[:-1], {}, "weight_hash", ""),
        (GOOD_HASH + "0", {}, "weight_hash", ""),
        (GOOD_HASH.upper(), {}, "weight_hash", ""),
        (GOOD_HASH, {}, "weight_hash_fp8", GOOD_HASH[:40]),
        (GOOD_HASH, {}, "weight_hash_fp8", GOOD_HASH.upper()),
        (GOOD_HASH, {"loss": math.nan}, "metrics[loss]", ""),
        (GOOD_HASH, {"grad_norm": math.inf}, "metrics[grad_norm]", ""),
    ],
)
def test_step_report(key, weight_hash, metrics, field, fp8):
    req = key.sign(
        "ReportStep",
        swarm_pb2.StepReport(step=1, weight_hash=weight_hash, metrics=metrics, weight_hash_fp8=fp8),
    )
    _accepted_or_refused_on(validate.step_report, req, field)


def _accepted_or_refused_on(check, req, field: str | None) -> InvalidRequest | None:
    """`check(req)` passes when `field` is None, else refuses naming `field`; returns the refusal."""
    if field is None:
        check(req, LIMITS)
        return None
    with pytest.raises(InvalidRequest) as e:
        check(req, LIMITS)
    assert e.value.field == field
    return e.value


# ---------------------------------------------------------------- packaging


HEAVY = ("torch", "transformers", "vllm", "hivemind")


@pytest.mark.parametrize("package", ["protocol", "core"])
def test_the_wire_and_core_packages_import_nothing_heavy(package):
    """The coordinator's network edge and the CLI's light commands import these; every module of
    both packages is imported (a new module is covered without editing this test)."""
    modules = sorted(p.stem for p in (REPO / "swarmgrpo" / package).glob("*.py") if p.stem != "__init__")
    assert modules, f"no modules found under swarmgrpo/{package}"
    code = "import sys\n" + "".join(f"import swarmgrpo.{package}.{m}\n" for m in modules)
    code += f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"swarmgrpo.{package} imported heavy modules: {out.stdout.strip()}"


@pytest.fixture(scope="module")
def fresh_stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO}", f"--python_out={out}", f"--pyi_out={out}"]
    cmd += [f"--grpc_python_out={out}", "swarmgrpo/protocol/swarm.proto"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out / "swarmgrpo" / "protocol"


@pytest.mark.parametrize("name", ["swarm_pb2.py", "swarm_pb2.pyi", "swarm_pb2_grpc.py"])
def test_generated_stubs_are_current(fresh_stubs, name):
    committed = (REPO / "swarmgrpo" / "protocol" / name).read_bytes()
    assert (fresh_stubs / name).read_bytes() == committed, f"{name} is stale: run `make proto`"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"step": 3, "device": "cuda"}, None),
        ({"step": 3}, None),
        ({"step": 3, "device": "tpu"}, "device"),
        ({"step": 3, "missing_node_ids": ["short"]}, "missing_node_ids"),
    ],
)
def test_train_batch(key, fields, field):
    req = key.sign("TrainBatch", swarm_pb2.TrainBatchRequest(**fields))
    refusal = _accepted_or_refused_on(validate.train_batch, req, field)
    if field == "device":
        assert "'tpu' is not cpu or cuda" in str(refusal) and "send cpu or cuda" in str(refusal)
