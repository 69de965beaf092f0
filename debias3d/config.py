"""Typed dataclass configs loaded from YAML, with ``key.sub=value`` command-line overrides.

Every stage owns a dataclass (``CorpusConfig``, ``BackboneTrainConfig``, ...). Each field has a
default and a one-line help in ``field(metadata={"help": ...})``. This module turns YAML into those
dataclasses and refuses anything it cannot check:

* an unknown key is an error (never silently ignored), with a "did you mean" hint;
* a renamed key (a dataclass's ``RENAMED_KEYS``, old name -> new name) still loads, with a one-line
  deprecation warning; giving both names is an error;
* a value of the wrong type is an error that names the file, the dotted key and the expected type;
* ``__post_init__`` of each dataclass rejects bad values with a message naming the field;
* an override of one key of a mapping field (``word_frequency.spiky=0.2``) edits that key and keeps
  the field's other (default or file) keys; ``word_frequency={spiky: 0.2}`` replaces the mapping.

>>> from debias3d.data.shapeworld.corpus import CorpusConfig
>>> cfg = load_config(CorpusConfig, overrides=["n=10", "word_frequency.spiky=0.2"])
>>> cfg.n, cfg.word_frequency["spiky"], cfg.word_frequency["red"]
(10, 0.2, 0.14)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "load_config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "dump_config",
    "describe",
    "check_bounds",
]


def check_bounds(
    cfg: Any, at_least: Iterable[str] = (), at_most: Mapping[str, float] | None = None, lower: float = 1
) -> None:
    """Reject a config whose named fields lie outside their bounds (``None`` values pass).

    Args:
        cfg: the dataclass being checked (its class names the field in the message).
        at_least: fields that must be ``>= lower``.
        at_most: field -> upper bound; a typo like ``samples=100000000`` must not grow memory
            or time without end.
        lower: the lower bound of the ``at_least`` fields.

    Raises:
        ValueError: ``"<Class>.<field> must be >= 1, got 0"`` (or ``<= upper``), for the first field out.

    >>> from debias3d.data.shapeworld.corpus import CorpusConfig
    >>> check_bounds(CorpusConfig(n=5), at_most={"n": 4})
    Traceback (most recent call last):
    ...
    ValueError: CorpusConfig.n must be <= 4, got 5
    """
    owner = type(cfg).__name__
    for name in at_least:
        value = getattr(cfg, name)
        if value is not None and value < lower:
            raise ValueError(f"{owner}.{name} must be >= {lower}, got {value}")
    for name, upper in (at_most or {}).items():
        value = getattr(cfg, name)
        if value is not None and value > upper:
            raise ValueError(f"{owner}.{name} must be <= {upper}, got {value}")


class ConfigError(ValueError):
    """A config file or override that does not match its dataclass. The message is one line."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, dict, Mapping):
        args = ", ".join(_type_name(a) for a in get_args(tp) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _where(source: str | None, key: str) -> str:
    return f"{source}: key '{key}'" if source else f"key '{key}'"


#: ``1e-4``, ``-2.5E+3``, ``.5``: numbers that YAML 1.1 leaves as strings.
_FLOAT_LITERAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _convert(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check ``value`` against annotation ``tp`` and convert (YAML lists → tuples, ints → floats)."""
    if tp is Any:
        return value
    origin = get_origin(tp)

    def fail() -> ConfigError:
        got = type(value).__name__
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ConfigError(f"{_where(source, key)}: expected {_type_name(tp)}, got {got} ({shown})")

    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as e:
                errors.append(e)
        raise fail()
    if origin is typing.Literal:
        if value in get_args(tp):
            return value
        raise fail()
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail()
        return from_dict(tp, value, source=source, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads `1e-4` as a string; accept plain numeric literals.
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp in (Path,):
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise fail()
            return tuple(
                _convert(v, a, f"{key}[{i}]", source)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise fail()
        k_tp, v_tp = (get_args(tp) + (Any, Any))[:2]
        return {
            _convert(k, k_tp, f"{key}.<key>", source): _convert(v, v_tp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail()
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type (see module doc)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}expected a mapping for {prefix or cls.__name__}, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed: Mapping[str, str] = getattr(cls, "RENAMED_KEYS", {})
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k in renamed and k not in fields:
            new = renamed[k]
            new_key = f"{prefix}.{new}" if prefix else new
            if new in data:
                raise ConfigError(f"{_where(source, key)}: give only '{new_key}' (the new name of '{key}')")
            logger.warning("%s: '%s' is deprecated; use '%s'", source or "config", key, new_key)
            k, key = new, new_key
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(fields)
            raise ConfigError(f"{_where(source, key)}: unknown key{hint}; {cls.__name__} accepts: {known}")
        kwargs[k] = _convert(v, hints[k], key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{prefix + ': ' if prefix else ''}{e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain dict of YAML-safe values (tuples → lists, Paths → str)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field (a fresh value for factories), or ``dataclasses.MISSING``."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if f.default is dataclasses.MISSING else copy.deepcopy(f.default)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, cls: Any = None) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        fld, tp = None, None  # the dataclass field `p` of `cls` and its type, when known
        if cls is not None and dataclasses.is_dataclass(cls):
            fld = {f.name: f for f in dataclasses.fields(cls)}.get(p)
            if fld is not None:
                try:
                    tp = typing.get_type_hints(cls)[p]
                except NameError:  # unresolvable annotation: from_dict reports it; plain merge here
                    tp = None
        nxt = node.get(p)
        if nxt is None:
            nxt = {}
            # `a.mapping.key=v` sets one key of a mapping field: start from the field's default
            # mapping, so the other keys keep their defaults instead of vanishing.
            if tp is not None and typing.get_origin(tp) in (dict, Mapping):
                default = _field_default(fld)
                if isinstance(default, Mapping):
                    nxt = dict(default)
            node[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a mapping")
        node = nxt
        cls = tp if tp is not None and dataclasses.is_dataclass(tp) else None
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], cls: Any = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML scalars/lists.

    With ``cls`` (the dataclass the dict will build), an override of one key of a mapping field
    (``corpus.word_frequency.yellow=0.01``) keeps the field's other default keys.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, _, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key, value, cls)
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Load ``cls`` from an optional YAML file plus ``key.sub=value`` overrides.

    Args:
        cls: the dataclass to build.
        path: a YAML file (a mapping at top level) or None for the defaults.
        overrides: dotted overrides, applied after the file.

    Raises:
        ConfigError: one line naming the file, the key and the expected type.
    """
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{p}: not valid YAML: {first}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides, cls)
        source = f"{source} (+ overrides)" if source else "command-line overrides"
    return from_dict(cls, data, source=source)


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write a dataclass config as YAML (used to record each run's resolved config)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return p


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) rows for ``--help`` texts and docs."""
    rows: list[tuple[str, str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix=key + "."))
            continue
        value = _field_default(f)
        default = "(required)" if value is dataclasses.MISSING else repr(value)
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
