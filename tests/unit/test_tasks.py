"""Task registry, config validation, arithmetic and jsonl tasks, rewards and user reward functions."""

import dataclasses
import hashlib
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from swarmgrpo.core.errors import ConfigError, UserError
from swarmgrpo.trainer.tasks import TASKS, Example, Task, TaskConfig, make_task, register_task
from swarmgrpo.trainer.tasks.arithmetic import make_example
from swarmgrpo.trainer.tasks.rewards import brevity
from swarmgrpo.trainer.tasks.split import derive_seed, in_eval

HELPERS = "tests.unit.reward_fns_for_tests"


def one_line_error(exc_info: pytest.ExceptionInfo) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def user_only(prompt: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": prompt},)


# --- registry and config -------------------------------------------------------------------------


def test_task_config_defaults():
    cfg = TaskConfig()
    assert (cfg.name, cfg.level, cfg.operations, cfg.dataset) == ("arithmetic", 1, "+", "")
    assert (cfg.eval_fraction, cfg.reward_fn, cfg.system_prompt, cfg.seed) == (0.1, "", "", 0)
    assert cfg.reward_weights == {"correctness": 1.0, "format": 0.0, "brevity": 0.1}
    assert TaskConfig().reward_weights is not cfg.reward_weights


def test_registry_holds_the_builtin_tasks():
    assert {"arithmetic", "countdown", "jsonl"} <= set(TASKS)
    assert make_task(TaskConfig(name="countdown")).name == "countdown"
    assert type(make_task(TaskConfig())).__name__ == "ArithmeticTask"


def test_unknown_task_name_lists_known_names():
    with pytest.raises(ConfigError) as exc_info:
        make_task(TaskConfig(name="gsm9k"))
    assert one_line_error(exc_info) == (
        "config field 'task.name': unknown task 'gsm9k'; use one of: arithmetic, countdown, jsonl, uppercase"
    )
    assert exc_info.value.field == "task.name"


class _EchoTask(Task):
    def train_examples(self, seed: int) -> Iterator[Example]:
        while True:
            yield Example(id=f"echo:{seed}", messages=user_only("say 7"), answer="7")

    def eval_examples(self, n: int) -> list[Example]:
        return []

    def is_correct(self, completion: str, example: Example) -> bool:
        return completion.strip() == example.answer


def test_register_task_makes_a_custom_task_constructible():
    try:
        register_task("test-echo")(_EchoTask)
        task = make_task(TaskConfig(name="test-echo"))
        assert task.name == "test-echo"
        example = next(task.train_examples(4))
        assert example.id == "echo:4"
        assert task.reward(" 7 ", example, 5, 10) == pytest.approx(1.0 + 0.1 * 0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_task("arithmetic")(_EchoTask)
    finally:
        TASKS.pop("test-echo", None)


@pytest.mark.parametrize(
    ("cfg", "field", "fragment"),
    [
        (TaskConfig(level=5), "task.level", "5 is not a known arithmetic level"),
        (TaskConfig(level=0), "task.level", "0 is not a known arithmetic level"),
        (TaskConfig(operations="+/"), "task.operations", "'+/' is not a non-empty subset of '+-*'"),
        (TaskConfig(operations=""), "task.operations", "'' is not a non-empty subset"),
        (TaskConfig(eval_fraction=1.0), "task.eval_fraction", "1.0 is not a number in [0, 1)"),
        (TaskConfig(eval_fraction=-0.1), "task.eval_fraction", "-0.1 is not a number in [0, 1)"),
        (TaskConfig(eval_fraction=float("nan")), "task.eval_fraction", "nan is not a number in [0, 1)"),
        (TaskConfig(reward_weights={"speed": 1.0}), "task.reward_weights", "unknown component 'speed'"),
        (
            TaskConfig(reward_weights={"brevity": float("inf")}),
            "task.reward_weights",
            "weight of 'brevity' is inf, not a finite number",
        ),
        (TaskConfig(reward_weights={"format": "1"}), "task.reward_weights", "weight of 'format' is '1'"),
        (TaskConfig(reward_weights=[1.0]), "task.reward_weights", "expected a mapping, got list"),
        (TaskConfig(name="jsonl"), "task.dataset", "is empty but task.name is 'jsonl'"),
    ],
)
def test_bad_config_fields_name_the_field_and_the_fix(cfg, field, fragment):
    with pytest.raises(ConfigError) as exc_info:
        make_task(cfg)
    message = one_line_error(exc_info)
    assert exc_info.value.field == field
    assert message.startswith(f"config field '{field}': ")
    assert fragment in message
    assert "; " in message


# --- split and seeds ------------------------------------------------------------------------------


def test_in_eval_is_a_fixed_hash_threshold():
    digest = hashlib.sha256(b"arith:23+45").digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    assert in_eval("arith:23+45", unit + 1e-9)
    assert not in_eval("arith:23+45", unit)
    keys = [f"k{i}" for i in range(2000)]
    small = {k for k in keys if in_eval(k, 0.1)}
    assert small <= {k for k in keys if in_eval(k, 0.2)}
    assert 140 <= len(small) <= 260
    assert not any(in_eval(k, 0.0) for k in keys)


def test_derive_seed_is_stable():
    expected = int.from_bytes(hashlib.sha256(b"a\x1f1").digest()[:8], "big")
    assert derive_seed("a", 1) == expected
    assert derive_seed("a", 1) != derive_seed("a", 2)


# --- arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operands", "ops", "expected_id", "answer", "prompt"),
    [
        ([23, 45], ["+"], "arith:23+45", "68", "What is 23 + 45? Give only the final number."),
        ([10, 99], ["-"], "arith:10-99", "-89", "What is 10 - 99? Give only the final number."),
        ([12, 3, 4], ["+", "*"], "arith:12+3*4", "24", "What is 12 + 3 * 4? Give only the final number."),
        ([50, 20, 3], ["-", "-"], "arith:50-20-3", "27", "What is 50 - 20 - 3? Give only the final number."),
        ([1234, 56], ["*"], "arith:1234*56", "69104", "What is 1234 * 56? Give only the final number."),
    ],
)
def test_make_example(operands, ops, expected_id, answer, prompt):
    example = make_example(operands, ops, user_only)
    assert example.id == expected_id
    assert example.answer == answer
    assert example.messages == ({"role": "user", "content": prompt},)


def _operands(example: Example) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", example.id)]


@pytest.mark.parametrize(
    ("level", "count", "low", "high"),
    [(1, {2}, 10, 99), (2, {2}, 100, 999), (3, {3}, 10, 99), (4, {2, 3}, 10, 9999)],
)
def test_arithmetic_levels(level, count, low, high):
    task = make_task(TaskConfig(level=level, operations="+"))
    samples = list(itertools.islice(task.train_examples(0), 500))
    for example in samples:
        operands = _operands(example)
        assert len(operands) in count
        assert all(low <= x <= high for x in operands)
        assert example.answer == str(sum(operands))
    seen_counts = {len(_operands(e)) for e in samples}
    assert seen_counts == count
    if level == 4:
        assert max(max(_operands(e)) for e in samples) >= 1000


def test_arithmetic_uses_only_the_configured_operations():
    task = make_task(TaskConfig(level=3, operations="-*"))
    ops = Counter()
    for example in itertools.islice(task.train_examples(1), 400):
        ops.update(re.findall(r"[-+*]", example.id.removeprefix("arith:")))
    assert set(ops) == {"-", "*"}


def test_arithmetic_train_is_deterministic_and_seeded():
    task = make_task(TaskConfig())

    def first(t: Task, seed: int) -> list[str]:
        return ids(list(itertools.islice(t.train_examples(seed), 50)))

    assert first(task, 0) == first(make_task(TaskConfig()), 0)
    assert first(task, 0) != first(task, 1)
    assert first(task, 0) != first(make_task(TaskConfig(seed=1)), 0)


def test_arithmetic_train_and_eval_are_disjoint():
    task = make_task(TaskConfig(operations="+-"))
    evals = task.eval_examples(300)
    eval_ids = set(ids(evals))
    assert len(eval_ids) == 300
    assert all(in_eval(i, 0.1) for i in eval_ids)
    train_ids = set()
    for seed in range(3):
        train_ids |= set(ids(list(itertools.islice(task.train_examples(seed), 2000))))
    assert not train_ids & eval_ids
    assert not any(in_eval(i, 0.1) for i in train_ids)


def test_arithmetic_eval_ignores_seeds_and_is_prefix_stable():
    base = make_task(TaskConfig()).eval_examples(100)
    assert make_task(TaskConfig(seed=9)).eval_examples(100) == base
    assert make_task(TaskConfig()).eval_examples(40) == base[:40]
    assert make_task(TaskConfig(operations="+-")).eval_examples(100) != base
    assert make_task(TaskConfig()).eval_examples(0) == []


def test_arithmetic_eval_reports_an_exhausted_universe():
    task = make_task(TaskConfig(eval_fraction=0.01))
    with pytest.raises(ConfigError) as exc_info:
        task.eval_examples(200)
    assert "distinct eval problems found" in one_line_error(exc_info)
    with pytest.raises(ConfigError, match="is 0 but 5 eval examples"):
        make_task(TaskConfig(eval_fraction=0.0)).eval_examples(5)


def test_system_prompt_comes_first():
    task = make_task(TaskConfig(system_prompt="You are a calculator."))
    example = next(task.train_examples(0))
    assert example.messages[0] == {"role": "system", "content": "You are a calculator."}
    assert example.messages[1]["role"] == "user"
    assert len(example.messages) == 2


def test_examples_are_hashable_and_compare_without_meta():
    a = make_example([23, 45], ["+"], user_only)
    b = dataclasses.replace(a, meta={"other": 1})
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.answer = "1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("completion", "correct"),
    [
        ("68", True),
        ("The answer is 68.", True),
        ("23 + 45 = 68", True),
        ("\\boxed{68}", True),
        ("68.0", True),
        ("67", False),
        ("68 is wrong, it is 69", False),
        ("", False),
    ],
)
def test_arithmetic_is_correct(completion, correct):
    task = make_task(TaskConfig())
    assert task.is_correct(completion, make_example([23, 45], ["+"], user_only)) is correct


@pytest.mark.parametrize(
    ("completion", "num_tokens", "components", "total"),
    [
        ("68", 2, {"correctness": 1.0, "format": 1.0, "brevity": 0.96875}, 1.096875),
        ("I think it's 68 or so", 100, {"correctness": 1.0, "format": 0.0, "brevity": 0.0}, 1.0),
        ("67", 0, {"correctness": 0.0, "format": 1.0, "brevity": 1.0}, 0.1),
        ("no idea", 32, {"correctness": 0.0, "format": 0.0, "brevity": 0.5}, 0.05),
    ],
)
def test_arithmetic_reward(completion, num_tokens, components, total):
    task = make_task(TaskConfig())
    example = make_example([23, 45], ["+"], user_only)
    assert task.reward_components(completion, example, num_tokens, 64) == components
    assert task.reward(completion, example, num_tokens, 64) == pytest.approx(total)


def test_reward_weights_missing_components_weigh_zero():
    task = make_task(TaskConfig(reward_weights={"format": 2.0}))
    example = make_example([23, 45], ["+"], user_only)
    assert task.reward("67", example, 1, 10) == pytest.approx(2.0)
    assert task.reward("about 68", example, 1, 10) == pytest.approx(0.0)


def test_brevity_is_clipped():
    assert brevity(0, 100) == 1.0
    assert brevity(25, 100) == 0.75
    assert brevity(150, 100) == 0.0
    with pytest.raises(ValueError):
        brevity(1, 0)


# --- user reward functions ------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [":", "."])
def test_user_reward_replaces_correctness(sep):
    task = make_task(TaskConfig(reward_fn=f"{HELPERS}{sep}contains_answer"))
    example = make_example([23, 45], ["+"], user_only)
    # "I got 68!" has no explicit format; the helper finds "68" in it.
    assert task.reward_components("I got 68!", example, 8, 16) == {
        "correctness": 1.0,
        "format": 0.0,
        "brevity": 0.5,
    }
    assert task.reward("67", example, 8, 16) == pytest.approx(0.05)
    assert task.is_correct("67", example) is False


def test_user_reward_can_be_fractional_or_bool():
    example = make_example([23, 45], ["+"], user_only)
    quarter = make_task(TaskConfig(reward_fn=f"{HELPERS}:quarter"))
    assert quarter.reward("x", example, 0, 10) == pytest.approx(0.25 + 0.1)
    true = make_task(TaskConfig(reward_fn=f"{HELPERS}:returns_true"))
    assert true.reward_components("x", example, 10, 10)["correctness"] == 1.0


def test_user_reward_gets_meta_and_cannot_mutate_it():
    task = make_task(TaskConfig(name="countdown", reward_fn=f"{HELPERS}:target_from_meta"))
    example = next(task.train_examples(0))
    assert task.reward_components("", example, 0, 1)["correctness"] == float(example.meta["target"])
    mutating = make_task(TaskConfig(name="countdown", reward_fn=f"{HELPERS}:mutates_meta"))
    numbers = list(example.meta["numbers"])
    mutating.reward("", example, 0, 1)
    assert example.meta["numbers"] == numbers
    assert "extra" not in example.meta


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            "raises",
            f"reward function '{HELPERS}:raises' raised ValueError: boom second line; "
            "fix the function or unset task.reward_fn",
        ),
        (
            "returns_nan",
            f"reward function '{HELPERS}:returns_nan' returned nan, not a finite number; "
            "fix the function or unset task.reward_fn",
        ),
        (
            "returns_inf",
            f"reward function '{HELPERS}:returns_inf' returned -inf, not a finite number; "
            "fix the function or unset task.reward_fn",
        ),
        (
            "returns_str",
            f"reward function '{HELPERS}:returns_str' returned str '1.0', not a number; "
            "fix the function or unset task.reward_fn",
        ),
        (
            "returns_none",
            f"reward function '{HELPERS}:returns_none' returned NoneType None, not a number; "
            "fix the function or unset task.reward_fn",
        ),
    ],
)
def test_broken_user_reward_is_a_user_error(fn, message):
    task = make_task(TaskConfig(reward_fn=f"{HELPERS}:{fn}"))
    example = make_example([23, 45], ["+"], user_only)
    with pytest.raises(UserError) as exc_info:
        task.reward("68", example, 1, 10)
    assert one_line_error(exc_info) == message


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        (
            "tests.unit.no_such_module:f",
            "cannot import module 'tests.unit.no_such_module' (ModuleNotFoundError",
        ),
        (f"{HELPERS}:missing", f"module '{HELPERS}' has no attribute 'missing'"),
        (f"{HELPERS}:NOT_A_FUNCTION", f"'{HELPERS}:NOT_A_FUNCTION' is a int, not a function"),
        ("justaname", "'justaname' is not a 'package.module:function' path"),
        (f"{HELPERS}:", f"'{HELPERS}:' is not a 'package.module:function' path"),
    ],
)
def test_unimportable_user_reward_is_a_config_error(path, fragment):
    with pytest.raises(ConfigError) as exc_info:
        make_task(TaskConfig(reward_fn=path))
    message = one_line_error(exc_info)
    assert exc_info.value.field == "task.reward_fn"
    assert fragment in message
    assert message.endswith(
        "set task.reward_fn to 'package.module:function' importable from this environment"
    )


# --- jsonl ---------------------------------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep HF datasets' arrow cache inside the test's tmp dir."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _rows() -> list[dict]:
    rows = [
        {
            "question": f"Tom has {k} apples and buys {k + 2} more. How many now?",
            "answer": f"{k}+{k + 2}=<<>>\n#### {2 * k + 2}",
        }
        for k in range(1, 15)
    ]
    rows.append({"question": "A house costs 990 plus 10 dollars. Price?", "answer": "990+10\n#### 1,000"})
    rows.append({"question": "Half of one?", "answer": "1/2\n#### 0.5"})
    rows.append({"question": "Five as a float?", "answer": "#### 5.0", "source": "made up"})
    rows.append({"question": "Tom has 1 apples and buys 3 more. How many now?", "answer": "dup\n#### 4"})
    return rows


def _write(path, rows: list[dict], blank_after: int | None = None) -> str:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _jsonl_id(question: str) -> str:
    return "jsonl:" + hashlib.sha256(question.encode()).hexdigest()[:16]


@pytest.fixture
def jsonl_path(tmp_path, hf_cache):
    return _write(tmp_path / "gsm.jsonl", _rows())


def _jsonl_task(path: str, **kw) -> Task:
    return make_task(TaskConfig(**{"name": "jsonl", "dataset": path, "eval_fraction": 0.3, **kw}))


def test_jsonl_split_follows_the_question_hash(jsonl_path):
    task = _jsonl_task(jsonl_path)
    questions = {r["question"] for r in _rows()}
    assert len(questions) == 17
    expected_eval = {_jsonl_id(q) for q in questions if in_eval(_jsonl_id(q), 0.3)}
    eval_ids = set(ids(task.eval_examples(100)))
    assert eval_ids == expected_eval
    assert 0 < len(eval_ids) < 17
    train_ids = set(ids(list(itertools.islice(task.train_examples(0), 100))))
    assert train_ids == {_jsonl_id(q) for q in questions} - expected_eval
    assert len(task.eval_examples(2)) == 2
    assert task.eval_examples(2) == task.eval_examples(100)[:2]


def test_jsonl_eval_is_independent_of_seed(jsonl_path):
    assert _jsonl_task(jsonl_path).eval_examples(10) == _jsonl_task(jsonl_path, seed=3).eval_examples(10)


def test_jsonl_examples_have_canonical_answers_and_prompt(jsonl_path):
    task = _jsonl_task(jsonl_path, eval_fraction=0.0, system_prompt="Be brief.")
    by_id = {e.id: e for e in itertools.islice(task.train_examples(0), 17)}
    assert len(by_id) == 17
    expected = {
        "A house costs 990 plus 10 dollars. Price?": "1000",
        "Half of one?": "0.5",
        "Five as a float?": "5",
        "Tom has 1 apples and buys 3 more. How many now?": "4",
        "Tom has 7 apples and buys 9 more. How many now?": "16",
    }
    for question, answer in expected.items():
        example = by_id[_jsonl_id(question)]
        assert example.answer == answer
        assert example.messages == (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"{question}\nEnd with the final answer as '#### <number>'."},
        )
    house = by_id[_jsonl_id("A house costs 990 plus 10 dollars. Price?")]
    assert task.is_correct("990 + 10 = 1,000\n#### 1,000", house)
    assert task.is_correct("The price is $1000.", house)
    assert not task.is_correct("#### 990", house)


def test_jsonl_train_cycles_with_a_new_order_each_epoch(jsonl_path):
    task = _jsonl_task(jsonl_path)
    size = len(task.train)
    stream = list(itertools.islice(task.train_examples(5), 3 * size))
    epochs = [ids(stream[i * size : (i + 1) * size]) for i in range(3)]
    train_ids = sorted(ids(task.train))
    assert all(sorted(epoch) == train_ids for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert ids(list(itertools.islice(task.train_examples(5), 3 * size))) == ids(stream)
    assert ids(list(itertools.islice(task.train_examples(6), 3 * size))) != ids(stream)


def test_jsonl_missing_file(tmp_path, hf_cache):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as exc_info:
        make_task(TaskConfig(name="jsonl", dataset=str(path)))
    assert one_line_error(exc_info) == (
        f"task dataset '{path}' does not exist; set task.dataset to an existing .jsonl file"
    )


@pytest.mark.parametrize(
    ("bad_row", "fragment"),
    [
        ({"question": "No answer here?"}, 'line 4 has no "answer" string'),
        ({"answer": "#### 3"}, 'line 4 has no "question" string'),
        ({"question": "Numeric answer?", "answer": 3}, 'line 4 has no "answer" string'),
        (
            {"question": "Missing hashes?", "answer": "it is 3"},
            "line 4 has no '#### <final answer>' at the end of its answer",
        ),
        (
            {"question": "Empty final?", "answer": "####   "},
            "line 4 has no '#### <final answer>' at the end of its answer",
        ),
    ],
)
def test_jsonl_bad_row_names_its_line(tmp_path, hf_cache, bad_row, fragment):
    rows = [*_rows()[:2], bad_row, *_rows()[2:5]]
    path = _write(tmp_path / "bad.jsonl", rows, blank_after=1)
    with pytest.raises(UserError) as exc_info:
        make_task(TaskConfig(name="jsonl", dataset=path))
    message = one_line_error(exc_info)
    assert message.startswith(f"task dataset '{path}': {fragment}; ")
    assert message.endswith('each line must be {"question": "...", "answer": "... #### <number>"}')


def test_jsonl_invalid_json_names_its_line(tmp_path, hf_cache):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_rows()[0]) + '\n{"question": "oops", answer\n')
    with pytest.raises(UserError) as exc_info:
        make_task(TaskConfig(name="jsonl", dataset=str(path)))
    assert f"task dataset '{path}': line 2 is not valid JSON" in one_line_error(exc_info)


def test_jsonl_eval_fraction_that_leaves_no_train_rows(tmp_path, hf_cache):
    path = _write(tmp_path / "tiny.jsonl", _rows()[:1])
    with pytest.raises(ConfigError) as exc_info:
        make_task(TaskConfig(name="jsonl", dataset=path, eval_fraction=0.999999999))
    assert "leaves no training rows out of 1" in one_line_error(exc_info)


# --- import weight -------------------------------------------------------------------------------


def test_tasks_import_no_heavy_libraries():
    code = (
        "import sys, itertools\n"
        "from swarmgrpo.trainer.tasks import make_task, TaskConfig\n"
        "for name in ('arithmetic', 'countdown'):\n"
        "    t = make_task(TaskConfig(name=name))\n"
        "    list(itertools.islice(t.train_examples(0), 5)); t.eval_examples(5)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
