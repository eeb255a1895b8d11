"""Typed config: dataclass defaults <- YAML file <- command-line overrides.

Every stage declares `@dataclass class Config` (sections are nested dataclasses)
and this module fills it in, later sources winning:

    defaults  <-  --config FILE.yaml  <-  key=value / --key=value / --key value / --section.key=value

Values are checked against the field annotations (int, float, bool, str,
`X | None`, `list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Literal[...]`, nested
dataclasses). Unknown keys and wrong types raise `ConfigError` naming the full
dotted key, e.g. `unknown key 'ppo.kl_coeff' (did you mean 'kl_coef'?)`. After
loading, every `resolve()` method in the tree is called once, parents before
their sections, so a parent may rewire a section and the section still
validates the final values. Mappings merge into sections and `dict` fields;
every other value is replaced whole. Numeric fields are range-checked by name
(`RANGES`: one rule per name in every section, e.g. `lr > 0`, `eval_every >= 0`)
before their section's `resolve()`. A YAML file with a key given twice is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

# A bare `--flag` on the command line: True for a bool field, "missing value" otherwise.
_FLAG = object()
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A config value that does not fit its field; the message names the dotted key."""


@dataclasses.dataclass(frozen=True)
class _Typed:
    """A command-line value: YAML-parsed, plus the text as typed.

    A field that takes a string gets the text when the parsed value does not fit
    (`annotator=42`, `device=0`), so strings need no shell quoting.
    """

    text: str
    parsed: Any


# Ranges of numeric fields by name, the same in every section that has the field. A stage's own
# resolve() adds the rules a name alone cannot say (batch_size a multiple of micro_batch_size).
_POSITIVE = ("lr", "batch_size", "micro_batch_size", "minibatch_size", "batch_groups", "rollout_batch_size",
             "prompts_per_step", "ptx_batch_size", "max_steps", "total_steps", "epochs", "grad_clip", "ckpt_every",
             "max_len", "max_new_tokens", "seq_len", "ppl_seq_len", "ppo_epochs", "k", "hidden_size",
             "intermediate_size", "num_heads", "num_layers", "vocab_size", "max_position_embeddings", "kl_horizon",
             "clip_range", "clip_range_value", "beta", "kl_target", "top_p", "micro_batch_groups", "alpha")
_NON_NEGATIVE = ("eval_every", "sample_every", "warmup_steps", "weight_decay", "kl_coef", "ptx_coef", "vf_coef",
                 "nll_coef", "accept_coef", "label_smoothing", "threads", "limit", "num_samples", "headroom_samples",
                 "prefixed_samples", "heldout_docs", "gold_tie_tol", "tie_tol", "temperature", "bootstrap", "margin",
                 "score_clip", "skip_nonfinite", "r", "dropout")
_AT_MOST_ONE = ("heldout_fraction", "min_lr_ratio", "gamma", "lam", "top_p", "label_smoothing", "dropout")
RANGES: dict[str, tuple[str, Any]] = {}  # name -> (what it must be, test)
for _n in _POSITIVE:
    RANGES[_n] = ("> 0", lambda v: v > 0)
for _n in _NON_NEGATIVE:
    RANGES[_n] = (">= 0", lambda v: v >= 0)
for _n in _AT_MOST_ONE:
    _rule, _test = RANGES.get(_n, (">= 0", lambda v: v >= 0))
    RANGES[_n] = (f"{_rule} and <= 1", lambda v, _t=_test: _t(v) and v <= 1)


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """ConfigError naming the dotted key of the first numeric field of `cfg` (not its sections) out of `RANGES`."""
    for f in dataclasses.fields(cfg):
        value, rule = getattr(cfg, f.name), RANGES.get(f.name)
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[1](value):
            raise ConfigError(f"'{prefix}{f.name}' must be {rule[0]}, got {value!r}")


# ---------------------------------------------------------------- public API


def load_config(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the files of its `BASE_CONFIGS` (a ClassVar, if any), then the YAML file at
    `path`, then `overrides`; then `resolve()`.

    Raises ConfigError for a missing/unparsable file, an unknown key, a value of
    the wrong type, or a failed `resolve()` validation.
    """
    cfg = cls()
    paths = [*getattr(cls, "BASE_CONFIGS", ()), *([find_config(cls, path)] if path is not None else [])]
    for p in paths:
        try:
            _merge(cfg, read_yaml(p), "")
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    for key, value in parse_overrides(overrides):
        _merge(cfg, _nest(key, value), "")
    resolve_all(cfg)
    return cfg


def find_config(cls: type, path: str) -> str:
    """`path` itself, or, when no such file exists and `cls` names a `CONFIG_DIR`, the file of that
    name there (`demo_quick` -> <CONFIG_DIR>/demo_quick.yaml)."""
    folder = getattr(cls, "CONFIG_DIR", None)
    if os.path.exists(path) or not folder:
        return path
    named = os.path.join(folder, path if path.endswith((".yaml", ".yml")) else f"{path}.yaml")
    return named if os.path.exists(named) else path


def parse_cli(cls: type[T], argv: Sequence[str]) -> T:
    """`load_config` from a command line: `--config FILE` (or `--config=FILE`) plus overrides."""
    path, rest, args = None, [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or arg.startswith("--config="):
            if path is not None:
                raise ConfigError("--config given more than once")
            if arg == "--config" and not args:
                raise ConfigError("--config needs a file name")
            path = arg.split("=", 1)[1] if "=" in arg else args.pop(0)
        else:
            rest.append(arg)
    return load_config(cls, path, rest)


def to_dict(cfg: Any) -> Any:
    """The config as plain YAML/JSON data: dataclasses -> dicts, tuples -> lists (field order kept)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any, path: str) -> None:
    """Write `to_dict(cfg)` as YAML; `load_config(type(cfg), path)` gives an equal config back."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def read_yaml(path: str) -> dict:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ConfigError("config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key given twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """`["--a.b=1", "c=x", "--d", "2", "--flag"]` -> keys `a.b, c, d, flag` with their values.

    Values are `_Typed`: parsed with `yaml.safe_load` (so `[a, b]` is a list and
    `null` is None; text YAML rejects stays a string), text kept. A bare
    `--flag` is `_FLAG` (True for a bool field). Dashes in keys become
    underscores (`--max-steps` == `--max_steps`).
    """
    out, args = [], list(args)
    while args:
        arg = args.pop(0)
        body = arg[2:] if arg.startswith("--") else arg
        if "=" in body:
            key, text = body.split("=", 1)
            value = _Typed(text, _parse_value(text))
        elif arg.startswith("--") and args and not args[0].startswith("--"):
            text = args.pop(0)
            key, value = body, _Typed(text, _parse_value(text))
        elif arg.startswith("--"):
            key, value = body, _FLAG
        else:
            raise ConfigError(f"unexpected argument {arg!r} (overrides look like key=value or --key=value)")
        key = key.replace("-", "_")
        if not key or not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"bad override key {key!r} in {arg!r}")
        out.append((key, value))
    return out


def resolve_all(cfg: Any, _seen: set[int] | None = None, _prefix: str = "") -> None:
    """Check the ranges of, then call `resolve()` on, `cfg` and then each nested dataclass, each object once.

    Parents go first: a parent's resolve() may rewrite its sections (the
    pipeline wires paths into its stages), and the sections then check the
    values they will actually run with.
    """
    seen = set() if _seen is None else _seen
    if not dataclasses.is_dataclass(cfg) or id(cfg) in seen:
        return
    seen.add(id(cfg))
    check_ranges(cfg, _prefix)
    if callable(getattr(cfg, "resolve", None)):
        cfg.resolve()
    for f in dataclasses.fields(cfg):
        resolve_all(getattr(cfg, f.name), seen, f"{_prefix}{f.name}.")


# ---------------------------------------------------------------- merging


def _merge(obj: Any, data: dict, prefix: str) -> None:
    """Set the fields of dataclass `obj` from mapping `data` (in place); `prefix` is obj's dotted key."""
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(_unknown(key, str(name), names))
        setattr(obj, name, _coerce(value, hints[name], key, getattr(obj, name)))


def _nest(dotted: str, value: Any) -> dict:
    """`("a.b.c", v)` -> `{"a": {"b": {"c": v}}}`, so overrides merge exactly like YAML."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _unknown(key: str, name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown key {key!r} ({hint})"


def _hints(cls: type) -> dict[str, Any]:
    # Config modules use `from __future__ import annotations`: annotations are strings until resolved.
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # a NameError in an annotation is a bug in the config class itself
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {e}") from e


# ---------------------------------------------------------------- type checking


def _coerce(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    """`value` checked (and minimally converted) against annotation `tp`, or ConfigError naming `key`.

    `current` is the field's present value: a mapping merges into it when it is
    a section or a dict.
    """
    if isinstance(value, _Typed):
        try:
            return _coerce(value.parsed, tp, key, current)
        except ConfigError as first:
            try:
                return _coerce(value.text, tp, key, current)
            except ConfigError:
                raise first from None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, args, key, current)
    if value is _FLAG and tp is not bool:
        raise ConfigError(f"{key!r}: missing value (write --{key}=VALUE)")
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key!r}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return _coerce_section(value, tp, key, current)
    if origin in (list, tuple, dict):
        return _coerce_container(value, origin, args, key, current)
    scalar = _SCALARS.get(tp)
    if scalar is None:
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        raise ConfigError(f"{key!r}: expected {_type_name(tp)}, got {_show(value)}")
    out = scalar(value)
    if out is None:
        raise ConfigError(f"{key!r}: expected {_type_name(tp)}, got {_show(value)}")
    return out


def _coerce_union(value: Any, tp: Any, args: tuple, key: str, current: Any) -> Any:
    if value is None and type(None) in args:
        return None
    messages = []
    for member in (a for a in args if a is not type(None)):
        try:
            # A section that is None by default starts from its own defaults.
            return _coerce(value, member, key, current if isinstance(current, _base(member)) else None)
        except ConfigError as e:
            messages.append(str(e))
    if value is _FLAG:
        raise ConfigError(f"{key!r}: missing value (write --{key}=VALUE)")
    # Report the error from inside a container or section when there is one (`'a.b[2]': ...`).
    inner = [m for m in messages if f"'{key}." in m or f"'{key}[" in m]
    raise ConfigError(inner[0] if inner else f"{key!r}: expected {_type_name(tp)}, got {_show(value)}")


def _coerce_section(value: Any, tp: type, key: str, current: Any) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key!r}: expected a mapping of {tp.__name__} fields, got {_show(value)}")
    section = current if isinstance(current, tp) else tp()
    _merge(section, value, key + ".")
    return section


def _coerce_container(value: Any, origin: type, args: tuple, key: str, current: Any) -> Any:
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r}: expected a mapping, got {_show(value)}")
        vt = args[1] if len(args) == 2 else Any
        out = dict(current) if isinstance(current, dict) else {}
        for k, v in value.items():
            if args and isinstance(args[0], type) and not isinstance(k, args[0]):
                raise ConfigError(f"{key!r}: expected {_type_name(args[0])} keys, got {k!r}")
            out[k] = _coerce(v, vt, f"{key}.{k}")
        return out
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key!r}: expected {_type_name(_alias(origin, args))}, got {_show(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple[X, Y]
        if len(value) != len(args):
            raise ConfigError(f"{key!r}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    f = _as_float(v) if isinstance(v, str) else None  # "1e4": YAML 1.1 reads exponents without a dot as strings
    return int(f) if f is not None and f.is_integer() else None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:  # PyYAML reads `1e-4` (no dot) as a string; it is still the float the user meant
            return float(v)
        except ValueError:
            return None
    return None


def _as_bool(v: Any) -> bool | None:
    if v is _FLAG:
        return True
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in _TRUE + _FALSE:
        return v.lower() in _TRUE
    return None


def _as_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


_SCALARS = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}


def _parse_value(raw: str) -> Any:
    """YAML-parse an override value; text YAML rejects (`a: b: c`) stays a plain string."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # An empty value (`key=`) is the empty string; null must be said (`key=null`).
    return raw if value is None and not raw.strip() else value


def _base(tp: Any) -> type:
    """The class an annotation checks instances against (`list[int]` -> list; `Literal` -> object)."""
    cls = typing.get_origin(tp) or tp
    return cls if isinstance(cls, type) else object


def _alias(origin: type, args: tuple) -> Any:
    return origin[args] if args else origin


def _type_name(tp: Any) -> str:
    """`str | None`, `list[int]`, `tuple[str, ...]`: how the annotation reads in the source."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    return "no value" if value is _FLAG else repr(value)
