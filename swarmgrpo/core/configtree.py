"""Typed config trees: dataclasses filled from TOML/YAML files and dotted CLI overrides.

Every config in swarmgrpo is a tree of dataclasses with a default for every field and a docstring
(a string literal) under each field. This module turns a file plus overrides such as
`task.level=2 learning_rate=3e-6` into that tree, checking every key and type on the way, and
renders a resolved tree back to TOML (with the field docstrings as comments) for `--print-config`.

It imports nothing heavy: the wire layer sends run configs as the dicts `to_dict` makes.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from swarmgrpo.core.errors import ConfigError, UserError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional TOML/YAML file and `key.sub=value` overrides, then validate it."""
    data: dict[str, Any] = read_config_file(path) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return from_dict(cls, data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file '{path}' does not exist; pass an existing .toml or .yaml file to --config"
        )
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as e:  # both parsers raise their own error types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config file '{path}' could not be parsed: {first}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a table of keys, not {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). The value is read as a TOML value when it is one, else as a string."""
    if "=" not in item:
        raise UserError(
            f"override '{item}' has no '='; write overrides as key=value, e.g. learning_rate=1e-5"
        )
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{key}': '{part}' is a value, not a table")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            raise ConfigError(name, "unknown key", hint)
        kwargs[key] = _coerce(hints[key], value, name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if prefix == "" and validate is not None:
        validate()
    return obj


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, name)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                name, f"expected a table, got {_show(value)}", f"write it as [{name}] with keys"
            )
        return from_dict(tp, value, prefix=f"{name}.")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                name, f"{_show(value)} is not allowed", f"choose one of: {', '.join(map(str, args))}"
            )
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                name, f"expected a table, got {_show(value)}", "write it as a table of key = value"
            )
        kt, vt = args
        return {_coerce(kt, k, f"{name}.{k}"): _coerce(vt, v, f"{name}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, f"expected a list, got {_show(value)}", "write it as [a, b, ...]")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"expected a number, got {_show(value)}", "write a number such as 0.1")
        if not math.isfinite(value):
            raise ConfigError(name, f"expected a finite number, got {value}", "write a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                name, f"expected an integer, got {_show(value)}", "write a whole number such as 8"
            )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {_show(value)}", "write true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(
                name, f"expected a string, got {_show(value)}", 'write it in quotes, e.g. "text"'
            )
        return value
    return value


def _show(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value, default=str)[:60]}"


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---- rendering for --print-config -------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of dataclass `cls`, read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            )
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def render_toml(cfg: Any, table: str = "") -> str:
    """The resolved config as TOML, each field preceded by its docstring as a comment; with `table`,
    as that table ("train" gives [train], [train.task], ...)."""
    lines: list[str] = []
    _render(cfg, table, lines)
    return "\n".join(lines).strip() + "\n"


def _render(cfg: Any, table: str, lines: list[str]) -> None:
    docs = field_docs(type(cfg))
    nested = []
    if table:
        lines += ["", f"[{table}]"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
            continue
        if f.name in docs:
            lines.extend(f"# {line}" for line in textwrap.wrap(docs[f.name], 100))
        if value is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {toml_value(value)}")
    for name, value in nested:
        _render(value, f"{table}.{name}" if table else name, lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")
