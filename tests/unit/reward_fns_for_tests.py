"""User reward functions for the task tests, imported by dotted path like a person's own module."""

NOT_A_FUNCTION = 3


def contains_answer(completion: str, answer: str, meta: dict) -> float:
    return 1.0 if answer in completion else 0.0


def quarter(completion: str, answer: str, meta: dict) -> float:
    return 0.25


def target_from_meta(completion: str, answer: str, meta: dict) -> float:
    return float(meta["target"])


def returns_true(completion: str, answer: str, meta: dict) -> bool:
    return True


def mutates_meta(completion: str, answer: str, meta: dict) -> float:
    meta["numbers"].append(1000)
    meta["extra"] = 1
    return 0.0


def raises(completion: str, answer: str, meta: dict) -> float:
    raise ValueError("boom\nsecond line")


def returns_nan(completion: str, answer: str, meta: dict) -> float:
    return float("nan")


def returns_inf(completion: str, answer: str, meta: dict) -> float:
    return float("-inf")


def returns_str(completion: str, answer: str, meta: dict) -> str:
    return "1.0"


def returns_none(completion: str, answer: str, meta: dict) -> None:
    return None
