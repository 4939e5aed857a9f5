"""Reward components shared by all tasks, and the user's own reward function loaded by dotted path.

The user function is untrusted in a different way than model output: it is the person's code, so any
failure (import, exception, NaN, a non-number) becomes a `UserError` naming the function and the fix,
rather than a traceback from deep inside the trainer.
"""

import copy
import importlib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from swarmgrpo.core.errors import ConfigError, UserError

COMPONENTS = ("correctness", "format", "brevity")

RewardFn = Callable[[str, str, dict], float]


def brevity(num_tokens: int, max_tokens: int) -> float:
    """1 - num_tokens / max_tokens clipped to [0, 1]: shorter completions score higher."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    return min(1.0, max(0.0, 1.0 - num_tokens / max_tokens))


def weighted_sum(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ weight_k × component_k; a component without a weight counts 0."""
    return sum(weights.get(k, 0.0) * v for k, v in components.items())


def validate_weights(weights: Any) -> dict[str, float]:
    """Check task.reward_weights names known components with finite numbers; return it as floats."""
    fix = f"use a mapping of {', '.join(COMPONENTS)} to numbers, e.g. {{correctness = 1.0, brevity = 0.1}}"
    if not isinstance(weights, Mapping):
        raise ConfigError("task.reward_weights", f"expected a mapping, got {type(weights).__name__}", fix)
    out: dict[str, float] = {}
    for key, value in weights.items():
        if key not in COMPONENTS:
            raise ConfigError("task.reward_weights", f"unknown component '{key}'", fix)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(
                "task.reward_weights", f"weight of '{key}' is {value!r}, not a finite number", fix
            )
        out[key] = float(value)
    return out


def _split_path(path: str) -> tuple[str, str]:
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    return module.strip(), attr.strip()


def load_reward_fn(path: str) -> RewardFn:
    """Import the user's reward function from "pkg.module:function" (or "pkg.module.function")."""
    fix = "set task.reward_fn to 'package.module:function' importable from this environment"
    module_name, attr = _split_path(path)
    if not module_name or not attr:
        raise ConfigError("task.reward_fn", f"'{path}' is not a 'package.module:function' path", fix)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            "task.reward_fn",
            f"cannot import module '{module_name}' ({type(exc).__name__}: {_one_line(exc)})",
            fix,
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError("task.reward_fn", f"module '{module_name}' has no attribute '{attr}'", fix)
    if not callable(fn):
        raise ConfigError("task.reward_fn", f"'{path}' is a {type(fn).__name__}, not a function", fix)
    return fn


def call_reward_fn(fn: RewardFn, path: str, completion: str, answer: str, meta: dict) -> float:
    """Call the user's function and insist on a finite number back."""
    fix = "fix the function or unset task.reward_fn"
    try:
        value = fn(completion, answer, copy.deepcopy(meta))
    except Exception as exc:
        raise UserError(
            f"reward function '{path}' raised {type(exc).__name__}: {_one_line(exc)}; {fix}"
        ) from exc
    if not isinstance(value, numbers.Real):
        raise UserError(
            f"reward function '{path}' returned {type(value).__name__} {value!r:.60}, not a number; {fix}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"reward function '{path}' returned {value}, not a finite number; {fix}")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
