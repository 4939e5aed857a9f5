"""The coordinator's team rules: who is granted the train role, who may be dropped from a step on
whose word, and when a step's reports publish a version."""

import pytest

from swarmgrpo.coordinator.teams import NoTrainSlot, StepTeam, grant_roles, pick_members
from swarmgrpo.protocol import swarm_pb2

ROLLOUT, TRAIN = swarm_pb2.ROLE_ROLLOUT, swarm_pb2.ROLE_TRAIN
H1, H2 = ("1" * 4, ("ab", "")), ("2" * 4, ("cd", ""))


def team(*members: str) -> StepTeam:
    return StepTeam(list(members), {m: [i] for i, m in enumerate(members)})


def report(t: StepTeam, member: str, weights: tuple[str, str]) -> None:
    t.reports[member] = (weights, {})


def test_train_is_granted_up_to_max_trainers_and_never_displaces_a_live_trainer():
    assert grant_roles([TRAIN], live_trainers=0, max_trainers=1) == [TRAIN]
    assert grant_roles([TRAIN], live_trainers=1, max_trainers=2) == [TRAIN]
    with pytest.raises(NoTrainSlot, match="max_trainers=1 live trainers; join with --roles rollout"):
        grant_roles([TRAIN], live_trainers=1, max_trainers=1)
    assert grant_roles([ROLLOUT], live_trainers=0, max_trainers=4) == [ROLLOUT]


def test_a_node_offering_any_role_trains_only_when_no_live_node_does():
    assert grant_roles([], live_trainers=0, max_trainers=4) == [TRAIN]
    assert grant_roles([], live_trainers=1, max_trainers=4) == [ROLLOUT]
    assert grant_roles([ROLLOUT, TRAIN], live_trainers=2, max_trainers=4) == [ROLLOUT]


def test_a_team_takes_the_most_senior_trainers_and_newer_keys_stand_by():
    ready = {"h1": 1.0, "h2": 2.0, "f1": 9.0, "f2": 9.5}  # the fakes joined while h1, h2 were silent
    assert pick_members(ready, "f1", max_trainers=2, groups=4) == ["h1", "h2"]
    assert pick_members(ready, "h2", max_trainers=3, groups=4) == ["f1", "h1", "h2"]
    assert pick_members(ready, "h2", max_trainers=3, groups=1) == ["h2"], "more workers than groups"
    assert pick_members({"a": 1.0}, "a", max_trainers=1, groups=2) == ["a"]


def test_one_peers_word_drops_no_worker_that_still_heartbeats():
    t = team("a", "b")
    t.claim("a", ["b"])
    assert t.droppable(live={"a", "b"}) == []
    assert t.droppable(live={"a"}) == ["b"], "silent to the coordinator too: dropped"


def test_most_of_the_team_naming_a_live_worker_drops_it():
    t = team("a", "b", "c")
    t.claim("a", ["c"])
    assert t.droppable(live={"a", "b", "c"}) == []
    t.claim("b", ["c"])
    assert t.droppable(live={"a", "b", "c"}) == ["c"]


def test_claims_from_outside_the_team_or_about_outsiders_and_oneself_count_for_nothing():
    t = team("h", "f")
    for stranger in ("x", "y", "z"):
        t.claim(stranger, ["h"])
    t.claim("f", ["f", "x"])
    assert t.claims == {}
    t.claim("f", ["h", "h"])
    assert t.claims == {"h": {"f"}} and t.droppable(live={"h", "f"}) == []


def test_a_drop_starts_a_new_attempt_and_frees_the_dropped_shards():
    t = team("a", "b", "c")
    report(t, "a", H1)
    t.claim("a", ["c"])
    assert t.drop(["c"]) == [2]
    assert t.members == ["a", "b"] and t.attempt == 1 and t.reports == {} and t.claims == {}


def test_a_version_waits_for_every_live_member_then_needs_a_majority_of_the_live_team():
    t = team("a", "b", "c")
    report(t, "a", H1)
    assert t.verdict(live={"a", "b", "c"}).waiting == ["b", "c"]
    report(t, "b", H2)
    assert t.verdict(live={"a", "b"}).waiting == [] and t.verdict(live={"a", "b"}).winner is None, "a tie"
    report(t, "c", H1)
    assert t.verdict(live={"a", "b", "c"}).winner == H1


def test_a_dead_member_that_never_reported_does_not_count_against_the_quorum():
    t = team("a", "b")
    report(t, "a", H1)
    assert t.verdict(live={"a", "b"}).waiting == ["b"]
    assert t.verdict(live={"a"}) == t.verdict(live=set())
    assert t.verdict(live={"a"}).winner == H1


def test_one_of_two_reports_never_publishes_while_the_other_is_live_and_disagrees():
    t = team("f", "h")  # f sorts first: under a plurality with ties to the first, f's hash won
    report(t, "f", H2)
    report(t, "h", H1)
    assert t.verdict(live={"f", "h"}).winner is None
    t.restart()
    assert t.attempt == 1 and t.reports == {}
