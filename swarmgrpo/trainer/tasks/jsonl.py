"""GSM8K-style problems from a .jsonl file: rows {"question": str, "answer": "... #### <number>"}.

Loaded with HF `datasets` (imported here only, so the other tasks stay light). Rows are checked once at
load time and a bad row is reported by its line in the file. Duplicate questions are kept once, so ids
are unique. Unlike the synthetic tasks the universe is finite: `eval_examples(n)` returns at most the
number of eval rows, in a fixed shuffled order independent of every seed.
"""

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from swarmgrpo.core.errors import ConfigError, UserError
from swarmgrpo.trainer.tasks.base import Example, Task
from swarmgrpo.trainer.tasks.config import TaskConfig
from swarmgrpo.trainer.tasks.extract import answers_match, extract_answer, parse_fraction
from swarmgrpo.trainer.tasks.registry import register_task
from swarmgrpo.trainer.tasks.split import derive_seed, in_eval

_FIX = "set task.dataset to an existing .jsonl file"
_ROW_FIX = 'each line must be {"question": "...", "answer": "... #### <number>"}'


def reference_answer(answer_text: str) -> str:
    """The canonical final answer after the last "####": "1,000" -> "1000", "5.0" -> "5"."""
    tail = answer_text.rsplit("####", 1)[1].strip()
    value = parse_fraction(tail)
    if value is None:
        return tail
    if value.denominator == 1:
        return str(value.numerator)
    return tail.replace(",", "")


def row_problem(row: object) -> str | None:
    """What is wrong with one parsed row, phrased to follow "line N", or None if it is usable."""
    if not isinstance(row, dict):
        return f"is a {type(row).__name__}, not a JSON object"
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        return 'has no "question" string'
    if not isinstance(answer, str):
        return 'has no "answer" string'
    if "#### " not in answer or not answer.rsplit("####", 1)[1].strip():
        return "has no '#### <final answer>' at the end of its answer"
    return None


def _first_bad_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {lineno} is not valid JSON ({exc.msg})"
            problem = row_problem(row)
            if problem:
                return f"line {lineno} {problem}"
    return "the file could not be read as JSON lines"


def load_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every row of the file, via `datasets.load_dataset("json", ...)`."""
    import datasets

    try:
        rows = datasets.load_dataset("json", data_files=str(path), split="train").to_list()
    except Exception as exc:
        # HF reports bad JSON or mixed column types without a line number; find it ourselves.
        raise UserError(f"task dataset '{path}': {_first_bad_line(path)}; {_ROW_FIX}") from exc
    with path.open(encoding="utf-8", errors="replace") as f:
        linenos = [i for i, line in enumerate(f, start=1) if line.strip()]
    if len(linenos) != len(rows):
        linenos = list(range(1, len(rows) + 1))
    return list(zip(linenos, rows, strict=True))


def row_to_example(
    lineno: int, row: dict, path: Path, messages_for: Callable[[str], tuple[dict, ...]]
) -> Example:
    """Validate one row and turn it into an Example; a bad row is a UserError naming its line."""
    problem = row_problem(row)
    if problem:
        raise UserError(f"task dataset '{path}': line {lineno} {problem}; {_ROW_FIX}")
    question, answer = row["question"].strip(), row["answer"]
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
    return Example(
        id=f"jsonl:{digest}",
        messages=messages_for(question),
        answer=reference_answer(answer),
        meta={"line": lineno, "solution": answer},
    )


@register_task("jsonl")
class JsonlTask(Task):
    """Questions and "#### N" answers from `task.dataset`, split by a hash of the question."""

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if not cfg.dataset:
            raise ConfigError("task.dataset", "is empty but task.name is 'jsonl'", _FIX)
        path = Path(cfg.dataset).expanduser()
        if not path.is_file():
            raise UserError(f"task dataset '{path}' does not exist; {_FIX}")
        examples: dict[str, Example] = {}
        for lineno, row in load_rows(path):
            example = row_to_example(lineno, row, path, self.user_messages)
            examples.setdefault(example.id, example)
        if not examples:
            raise UserError(f"task dataset '{path}' has no rows; {_FIX}")
        self.train = [e for e in examples.values() if not in_eval(e.id, cfg.eval_fraction)]
        self.eval = [e for e in examples.values() if in_eval(e.id, cfg.eval_fraction)]
        if not self.train:
            raise ConfigError(
                "task.eval_fraction",
                f"leaves no training rows out of {len(examples)} in '{path}'",
                "lower it or use a larger dataset",
            )
        random.Random(derive_seed(self.name, "eval")).shuffle(self.eval)

    def user_messages(self, prompt: str) -> tuple[dict, ...]:
        return super().user_messages(f"{prompt}\nEnd with the final answer as '#### <number>'.")

    def train_examples(self, seed: int) -> Iterator[Example]:
        rng = random.Random(derive_seed(self.name, "train", self.cfg.seed, seed))
        while True:
            epoch = list(self.train)
            rng.shuffle(epoch)
            yield from epoch

    def eval_examples(self, n: int) -> list[Example]:
        return self.eval[: max(n, 0)]

    def is_correct(self, completion: str, example: Example) -> bool:
        return answers_match(extract_answer(completion), example.answer)
