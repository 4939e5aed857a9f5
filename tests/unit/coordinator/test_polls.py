"""Long polls: a held call answers at once when it need not wait, asks again on every change, and
gives up at its deadline, telling the node it need not wait before asking again."""

import asyncio
from dataclasses import dataclass

from swarmgrpo.coordinator.polls import Polls


@dataclass
class Reply:
    value: int
    retry_after_s: float = 0.5


def held(polls: Polls, wait_s: float, state: dict, until: int):
    async def answer():
        state["asked"] += 1
        return Reply(state["value"])

    return polls.hold_wait_reply(wait_s, answer, lambda r: r.value < until)


def test_a_call_that_need_not_wait_is_answered_at_once():
    async def go():
        state = {"value": 3, "asked": 0}
        reply = await held(Polls(), 10.0, state, until=1)
        return reply, state["asked"]

    reply, asked = asyncio.run(go())
    assert reply.value == 3 and asked == 1 and reply.retry_after_s == 0.5


def test_a_held_call_asks_again_on_each_change_and_answers_when_it_may():
    async def go():
        polls, state = Polls(), {"value": 0, "asked": 0}
        call = asyncio.create_task(held(polls, 10.0, state, until=2))
        await asyncio.sleep(0.01)
        polls.notify()  # a change that does not yet free the call
        await asyncio.sleep(0.01)
        state["value"] = 2
        polls.notify()
        return await asyncio.wait_for(call, 1.0), state["asked"]

    reply, asked = asyncio.run(go())
    assert reply.value == 2 and asked == 3


def test_a_held_call_that_runs_out_asks_for_no_further_delay():
    async def go():
        state = {"value": 0, "asked": 0}
        return await held(Polls(), 0.02, state, until=1), state["asked"]

    reply, asked = asyncio.run(go())
    assert reply.value == 0 and reply.retry_after_s == 0.0 and asked == 1


def test_a_call_that_asks_not_to_be_held_keeps_its_delay():
    async def go():
        return await held(Polls(), 0.0, {"value": 0, "asked": 0}, until=1)

    assert asyncio.run(go()).retry_after_s == 0.5


def test_a_change_during_an_answer_is_not_missed():
    async def go():
        polls, state = Polls(), {"value": 0, "asked": 0}

        async def answer():
            state["asked"] += 1
            value = state["value"]
            if state["asked"] == 1:
                state["value"] = 1
                polls.notify()  # the work moved while the first answer was being made
            return Reply(value)

        return await polls.hold(10.0, answer, lambda r: r.value < 1), state["asked"]

    reply, asked = asyncio.run(asyncio.wait_for(go(), 2.0))
    assert reply.value == 1 and asked == 2
