"""Markdown reference of a config tree, generated from its field docstrings.

The docstring under each field is the one source of what the field means: `--print-config` shows it
as a comment, and this module turns the same text into one table per config table ([train],
[train.task], ...) with each field's type and default. A document made here has two parts: what a
person wrote above `MARKER`, kept as it is, and the tables below it, rewritten whole each time, so
the reference cannot drift from the code (a test compares the committed file with a fresh render).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from swarmgrpo.core.configtree import field_docs, toml_value

MARKER = "<!-- Generated below this line from the config classes' field docstrings: edit those, not this. -->"


def document(cls: type, current: str) -> str:
    """`current` with everything below MARKER replaced by the tables of config class `cls`; a
    document without the marker keeps all its text as the hand-written part."""
    written = current.split(MARKER, 1)[0].rstrip()
    head = f"{written}\n\n" if written else ""
    return f"{head}{MARKER}\n\n{config_tables(cls)}"


def config_tables(cls: type, table: str = "") -> str:
    """One section per table of the tree rooted at `cls`: a heading, the class docstring, and a row
    per field (name, type, default, meaning). Nested tables follow their parent, depth first."""
    sections: list[str] = []
    _collect(cls, table, sections)
    return "\n\n".join(sections) + "\n"


def _collect(cls: type, table: str, sections: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        name = f"{table}.{f.name}" if table else f.name
        if dataclasses.is_dataclass(tp):
            nested.append((tp, name))
            rows.append(f"| `{f.name}` | table | | {_cell(docs.get(f.name, ''))} See `[{name}]`. |")
            continue
        rows.append(
            f"| `{f.name}` | `{_cell(_type_name(tp))}` | {_cell(_default(f))} | {_cell(docs.get(f.name, ''))} |"
        )
    heading = f"### `[{table}]`" if table else "### Top level"
    about = " ".join(_class_doc(cls).split())
    sections.append("\n\n".join(part for part in (heading, about, "\n".join(rows)) if part))
    for sub, name in nested:
        _collect(sub, name, sections)


def _class_doc(cls: type) -> str:
    """The class's own docstring; dataclass() makes one from the signature where there is none."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return "unset" if value is None else f"`{toml_value(value)}`"


def _cell(text: str) -> str:
    """Text that stays inside one table cell (GitHub splits cells at a bare `|`, in code too)."""
    return text.replace("|", "\\|")
