"""The lease line: a share per key, and free prompts kept for the nodes ahead in line."""

import time

from swarmgrpo.coordinator.leaseline import LeaseLine, lease_size


def size(asker, free, holders=(), line=None, expired=None, budget=4, per_lease=2, now=100.0):
    return lease_size(asker, free, budget, per_lease, set(holders), line or {}, expired or {}, now)


def test_a_lone_node_gets_a_lease_of_prompts_per_lease():
    assert size("a", free=4) == 2
    assert size("a", free=1) == 1
    assert size("a", free=0) == 0


def test_the_share_shrinks_with_the_nodes_wanting_work():
    assert size("e", free=4, holders={"a"}, line={"b": 1.0, "c": 2.0}) == 1  # ceil(4 / 4)
    assert size("b", free=4, holders={"a"}, line={"b": 1.0, "c": 2.0}) == 2  # ceil(4 / 3)


def test_free_prompts_are_kept_for_the_nodes_ahead():
    line = {"b": 1.0, "c": 2.0}  # b and c asked first
    assert size("d", free=3, line=line) == 0, "the free prompts are b's and c's shares (2 each)"
    assert size("c", free=3, line=line) == 1, "b's share is kept"
    assert size("c", free=4, line=line) == 2
    assert size("b", free=1, line=line) == 1


def test_a_node_whose_leases_expired_goes_behind_every_node_that_delivers():
    hoarders = {f"h{i}": 1.0 for i in range(4)}  # in line before the honest node, each with an expiry
    line = hoarders | {"honest": 50.0}
    expired = dict.fromkeys(hoarders, 1)
    assert size("honest", free=2, line=line, expired=expired) == 1
    assert size("h0", free=1, line=line, expired=expired) == 0, "the one free prompt is the honest node's"


def test_a_node_stays_in_line_while_it_keeps_asking_and_loses_its_place_when_it_stops():
    line = LeaseLine(grace_s=0.2)
    with line.asking("a"):
        line.refused("a")
        first = line.waiting()["a"]
        time.sleep(0.3)  # a held call: still asking
        assert line.waiting() == {"a": first}
    with line.asking("a"):
        line.refused("a")
    assert line.waiting() == {"a": first}, "asked again within grace_s: same place"
    time.sleep(0.3)
    assert line.waiting() == {}
    with line.asking("a"):
        line.refused("a")
        assert line.waiting()["a"] > first, "back after a pause: at the end of the line"
    line.served("a")
    assert line.waiting() == {}
