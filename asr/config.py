"""Frozen dataclass configs loaded from YAML.

Every component has its own frozen dataclass; an experiment config nests them. Loading checks every
key: an unknown or mistyped key is a :class:`ConfigError` that names the key and the file.

Example::

    @dataclass(frozen=True)
    class Opt:
        lr: float = 1e-3
        steps: int = 10

    from_dict(Opt, {"lr": 0.1}, source="x.yaml")   # Opt(lr=0.1, steps=10)
    from_dict(Opt, {"lrr": 0.1}, source="x.yaml")  # ConfigError: x.yaml: unknown key 'lrr' ...
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "from_dict", "load_yaml", "read_yaml", "resolve_path", "to_dict", "save_yaml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping does not match its dataclass."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # ``X | None``: X's own message names the bad key (an unknown one, say)
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{key}' for {cls.__name__} (known keys: {known})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict | None, source: str = "<dict>") -> T:
    """Build the frozen dataclass ``cls`` from a (nested) mapping, checking every key and type."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return _from_dict(cls, data, source)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{source}: {e}") from None


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML file ``path`` (None for an empty file); a missing file or bad YAML raises
    :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load ``cls`` from the YAML file ``path``; errors name the file and the key."""
    return from_dict(cls, read_yaml(path), source=str(path))


def resolve_path(p: str, base: Path) -> str:
    """``p`` as an absolute path; a relative ``p`` is taken relative to ``base`` (a config's folder)."""
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def to_dict(cfg: Any) -> dict:
    """A frozen dataclass as plain, YAML-friendly Python data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
