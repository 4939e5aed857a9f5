"""Scoring of submitted completions in a worker process, within a CPU budget per submission.

The coordinator re-computes every reward from token ids (it never trusts a node's), and completions
are untrusted text: scoring must never hold the event loop that answers every other RPC. `Scorer`
owns one worker process; Submit awaits its answer while heartbeats, leases and the rest go on.

- The worker is forked from the coordinator once the run's tokenizer and task are loaded and before
  the gRPC server or any Python thread starts, so it starts in milliseconds and decodes exactly as the
  coordinator would. It runs at a lower priority (nice +10): untrusted work yields the CPU to RPCs.
- Budget (`score_cpu_budget_s`): the worker checks its CPU time after each completion and stops a
  submission that went over; a single completion that runs on inside C is stopped by the kernel
  (RLIMIT_CPU, at the next whole second past the budget) and the worker is started again.
- Over budget, the whole submission is refused (`OverBudget`), not scored 0: a 0 would still train
  the policy on text nobody scored, and an honest node never comes near the budget (the worst
  completions cost milliseconds). The caller stores nothing of it.
- Submissions are scored one at a time, in the order they arrive.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from swarmgrpo.core.errors import UserError

# (example as stored, token ids of each completion) for each group of one submission
Groups = list[tuple[dict, list[list[int]]]]
RewardFn = Callable[[dict, list[int]], float]

_NICE = 10


class OverBudget(Exception):
    """Scoring one submission took more CPU than the run allows; nothing of it was kept."""

    def __init__(self, cpu_s: float, budget_s: float):
        self.cpu_s, self.budget_s = cpu_s, budget_s
        super().__init__(
            f"scoring this submission took more than {budget_s:g} s of CPU (score_cpu_budget_s); "
            "nothing was stored and its prompts go to other nodes"
        )


class Scorer:
    """Scores submissions in a forked worker process; create it before any thread starts."""

    def __init__(self, reward: RewardFn, budget_s: float):
        self.reward = reward
        self.budget_s = budget_s
        self.last_cpu_s = 0.0  # the worker's CPU time for the last submission it finished
        # one thread talks to the worker: a Submit cancelled while waiting cannot interleave two jobs
        self._talker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_work, args=(child, self._conn, self.reward, self.budget_s), daemon=True, name="scorer"
        )
        self._proc.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def score(self, groups: Groups) -> list[list[float]]:
        """Rewards for each completion of each group; raises OverBudget."""
        return await asyncio.get_running_loop().run_in_executor(self._talker, self._round_trip, groups)

    def _round_trip(self, groups: Groups) -> list[list[float]]:
        try:
            self._conn.send(groups)
            answer = self._conn.recv()
        except (EOFError, OSError):  # the kernel stopped it at the CPU limit
            self._restart()
            raise OverBudget(math.inf, self.budget_s) from None
        kind, value, cpu_s = answer
        self.last_cpu_s = cpu_s
        if kind == "over":
            raise OverBudget(cpu_s, self.budget_s)
        if kind == "error":
            raise UserError(value)
        return value

    def _restart(self) -> None:
        self._conn.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._start()

    def close(self) -> None:
        """Stop the worker (it also stops by itself when the coordinator's end of the pipe closes)."""
        self._talker.shutdown(wait=False, cancel_futures=True)
        self._conn.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _work(conn, parent_end, reward: RewardFn, budget_s: float) -> None:
    parent_end.close()  # so that the coordinator exiting, even by kill -9, ends recv() here
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the coordinator, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.nice(_NICE)
    while True:
        try:
            groups = conn.recv()
        except EOFError:
            return
        _limit_cpu(budget_s)
        conn.send(_score(groups, reward, budget_s))


def _limit_cpu(budget_s: float) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(spent + budget_s)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _score(groups: Groups, reward: RewardFn, budget_s: float) -> tuple[str, object, float]:
    start = time.process_time()
    rewards: list[list[float]] = []
    try:
        for example, completions in groups:
            row = []
            for token_ids in completions:
                row.append(reward(example, token_ids))
                if time.process_time() - start > budget_s:
                    return "over", None, time.process_time() - start
            rewards.append(row)
    except Exception as e:  # e.g. the run owner's reward function raised: the coordinator reports it
        return "error", f"scoring failed: {type(e).__name__}: {e}", time.process_time() - start
    return "ok", rewards, time.process_time() - start
