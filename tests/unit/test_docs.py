"""docs/operators.md is generated from the run config's field docstrings (`make docs`): the committed
file must equal a fresh render, and the generator keeps the hand-written part and renders every field."""

from dataclasses import dataclass, field
from pathlib import Path

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.core.configdoc import MARKER, config_tables, document

OPERATORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operators.md"


@dataclass
class _Inner:
    """The inner table."""

    ratio: float | None = None
    """A ratio | with a pipe."""


@dataclass
class _Outer:
    """The outer table."""

    name: str = "x"
    """The name."""

    sizes: list[int] = field(default_factory=lambda: [1, 2])
    """Sizes, spread
    over two lines."""

    inner: _Inner = field(default_factory=_Inner)
    """Nested."""


def test_operators_doc_is_current():
    committed = OPERATORS_DOC.read_text()
    assert MARKER in committed, f"{OPERATORS_DOC} lost its marker line; run `make docs`"
    assert committed == document(RunConfig, committed), (
        f"{OPERATORS_DOC} is stale: a config field or its docstring changed; run `make docs`"
    )


def test_a_row_per_field_with_type_default_and_docstring():
    tables = config_tables(_Outer)
    assert "### Top level\n\nThe outer table." in tables
    assert '| `name` | `str` | `"x"` | The name. |' in tables
    assert "| `sizes` | `list[int]` | `[1, 2]` | Sizes, spread over two lines. |" in tables
    assert "| `inner` | table | | Nested. See `[inner]`. |" in tables
    assert "### `[inner]`\n\nThe inner table." in tables
    assert "| `ratio` | `float \\| None` | unset | A ratio \\| with a pipe. |" in tables


def test_every_run_config_field_is_documented():
    tables = config_tables(RunConfig)
    for name in ("join_token", "node_per_s", "grad_compression", "reward_weights"):
        assert f"| `{name}` |" in tables
    assert "|  |" not in tables.replace("| table | |", ""), "a field has no docstring"


def test_the_hand_written_part_is_kept_and_the_tables_replaced():
    first = document(_Outer, "# Title\n\nWritten by hand.\n")
    assert first.startswith(f"# Title\n\nWritten by hand.\n\n{MARKER}\n\n### Top level")
    stale = first.replace("The name.", "An old docstring.")
    assert stale != first
    assert document(_Outer, stale) == first
