"""Errors a person can act on.

A `UserError` is bad input (a config field, a file, a model name): the CLI prints its message as one
line and exits 2, with no traceback. The message names what is wrong and how to fix it.
"""


class UserError(Exception):
    """Bad input from a person: printed as one line, no traceback."""


class ConfigError(UserError):
    """A config field is unknown, of the wrong type, or out of range."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"config field '{field}': {problem}; {fix}")
