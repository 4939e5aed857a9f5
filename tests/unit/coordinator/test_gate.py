"""The coordinator's door rules: request size caps, token buckets, who pays for a request."""

import pytest

from swarmgrpo.coordinator import gate
from swarmgrpo.coordinator.gate import Buckets, address_of
from swarmgrpo.protocol import sizes, swarm_pb2, validate
from swarmgrpo.protocol.validate import InvalidRequest, Limits

LIMITS = Limits(vocab_size=49152, group_size=4, max_completion_length=8)
CHECKS = {
    "Join": validate.join,
    "Heartbeat": validate.heartbeat,
    "GetPolicy": validate.policy,
    "Lease": validate.lease,
    "Submit": lambda r, lim: validate.submit(r, lim, {g.prompt_index for g in r.groups}),
    "TrainBatch": validate.train_batch,
    "ReportStep": validate.step_report,
    "Leave": validate.signed_only,
    "Status": lambda r, lim: None,
}


def test_every_method_has_a_cap_and_its_largest_request_is_valid():
    largest = sizes.largest_requests(LIMITS, groups_per_submit=2)
    assert set(largest) == {m.name for m in gate.SERVICE.methods}
    for method, request in largest.items():
        CHECKS[method](request, LIMITS)


def _unset_fields(message, prefix=""):
    for field in message.DESCRIPTOR.fields:
        name = prefix + field.name
        if field.is_repeated:
            value = getattr(message, field.name)
            if not len(value):
                yield name
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                yield from _unset_fields(value[0], name + ".")
        elif field.message_type is not None:
            if not message.HasField(field.name):
                yield name
            else:
                yield from _unset_fields(getattr(message, field.name), name + ".")
        elif getattr(message, field.name) == field.default_value:
            yield name


@pytest.mark.parametrize("method", [m.name for m in gate.SERVICE.methods])
def test_the_largest_request_sets_every_field(method):
    """A field added to a request must get its bound here too, or honest requests could be refused."""
    request = sizes.largest_requests(LIMITS, groups_per_submit=2)[method]
    assert list(_unset_fields(request)) == [], (
        f"give these fields their bound in protocol/sizes.py ({method})"
    )


def test_submit_cap_grows_with_the_run_and_the_others_do_not():
    small = sizes.request_caps(LIMITS, groups_per_submit=2)
    big = sizes.request_caps(Limits(vocab_size=151936, group_size=16, max_completion_length=4096), 8)
    assert big["Submit"] > 8 * 16 * 4096 * 7 > small["Submit"]  # >= 7 bytes a token: id and log-prob
    assert {m: c for m, c in big.items() if m != "Submit"} == {
        m: c for m, c in small.items() if m != "Submit"
    }
    assert max(small.values()) < 256 * 1024  # was 64 MiB for every method
    assert small["Status"] == 0 and small["Heartbeat"] < 4096


@pytest.mark.parametrize(
    "method, grow, field",
    [
        ("Heartbeat", lambda r: setattr(r, "activity", r.activity + "x"), "activity"),
        ("Heartbeat", lambda r: setattr(r.auth, "public_key", b"k" * 33), "auth.public_key"),
        ("Join", lambda r: r.roles.append(swarm_pb2.ROLE_ROLLOUT), "roles"),
        ("Join", lambda r: r.capabilities.engines.append("vllm"), "capabilities.engines"),
        ("Join", lambda r: r.capabilities.engines.__setitem__(0, "x" * 513), "capabilities.engines"),
        ("Join", lambda r: r.peer_addrs.append("/ip4/1.2.3.4/tcp/1"), "peer_addrs"),
        ("TrainBatch", lambda r: r.missing_node_ids.append("f" * 32), "missing_node_ids"),
        ("ReportStep", lambda r: r.metrics.__setitem__("one_more", 1.0), "metrics"),
        ("ReportStep", lambda r: r.set_aside_prompts.append(1), "set_aside_prompts"),
        (
            "Submit",
            lambda r: r.groups[0].completions[0].token_ids.append(1),
            "groups[0].completions[0].token_ids",
        ),
        ("Submit", lambda r: r.groups[0].completions.add(), "groups[0].completions"),
        ("Leave", lambda r: setattr(r, "reason", r.reason + "x"), "reason"),
    ],
)
def test_one_more_than_the_largest_is_invalid(method, grow, field):
    """The caps are the largest *valid* requests: one element or character more is refused."""
    request = sizes.largest_requests(LIMITS, groups_per_submit=2)[method]
    grow(request)
    with pytest.raises(InvalidRequest) as e:
        CHECKS[method](request, LIMITS)
    assert e.value.field == field


def test_a_bucket_gives_its_burst_then_one_token_per_interval():
    b = Buckets(per_s=2.0, burst=3)
    assert [b.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a", now=0.0) == pytest.approx(0.5)  # the next token in 1 / per_s
    assert b.take("b", now=0.0) == 0.0  # another key has its own bucket
    assert b.take("a", now=0.25) == pytest.approx(0.25)  # a refused take costs nothing
    assert b.take("a", now=0.5) == 0.0
    assert b.take("a", now=100.0) == 0.0 and b.take("a", now=100.0) == 0.0  # refilled to burst only
    assert b.take("a", now=100.0) == 0.0 and b.take("a", now=100.0) > 0


def test_buckets_forget_the_full_ones_past_max_keys(monkeypatch):
    monkeypatch.setattr(gate, "MAX_KEYS", 4)
    b = Buckets(per_s=1.0, burst=2)
    for i in range(4):
        b.take(f"old{i}", now=0.0)
    b.take("busy", now=9.0)
    b.take("busy", now=9.0)
    b.take("new", now=10.0)  # the old ones are full by now: forgotten, the busy one kept
    assert len(b) == 2 and b.take("busy", now=10.0) == 0.0 and b.take("busy", now=10.0) > 0


@pytest.mark.parametrize(
    "peer, address",
    [
        ("ipv4:203.0.113.7:51234", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff::9]:1", "2001:db8:1:2::/64"),  # one /64, one payer
        ("ipv6:[::ffff:127.0.0.1]:8", "127.0.0.1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_who_pays_is_the_ipv4_address_or_the_ipv6_64(peer, address):
    assert address_of(peer) == address


def test_buckets_stay_bounded_when_every_key_is_busy(monkeypatch):
    monkeypatch.setattr(gate, "MAX_KEYS", 8)
    b = Buckets(per_s=0.001, burst=1)
    for i in range(100):
        b.take(f"k{i}", now=float(i))
        assert len(b) <= 8
    assert b.take("k99", now=100.0) > 0  # the most recent are kept
