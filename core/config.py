"""Typed, validated YAML configs shared by every stage.

A config file is YAML validated by a pydantic model (`ConfigModel`): unknown keys, wrong types and
missing required fields are errors naming the file and the dotted key that caused them. A file may
`extends:` one or more base files (paths relative to itself); later files and `--set key=value`
overrides win. The origin of every key is tracked so that an error points at the file that wrote it.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

EXTENDS_KEY = "extends"
OVERRIDE_ORIGIN = "--set"

C = TypeVar("C", bound="ConfigModel")


class ConfigError(Exception):
    """A user error in a config file or override: printed as one line, exit code 2."""


class ConfigModel(BaseModel):
    """Base of every config: strict about keys, lax only where YAML is (ints become floats)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Reading files with `extends:`
# ---------------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML mapping from `path`, or a ConfigError saying why not."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: unreadable YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: Mapping) -> dict:
    """`top` over `base`, recursively (neither is modified)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _record_origins(value: Any, dotted: str, origins: dict[str, str], origin: str) -> None:
    origins[dotted] = origin
    if isinstance(value, Mapping):
        for key, sub in value.items():
            if key != EXTENDS_KEY:
                _record_origins(sub, f"{dotted}.{key}", origins, origin)


def load_yaml_tree(path: Path, origins: dict[str, str], prefix: str = "",
                   _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read `path`, resolving `extends:` (a path or list of paths, relative to the file).

    `extends:` may appear in any section too (`model: {extends: ../model/tiny.yaml, d_model: 64}`):
    the base file then fills that section. Precedence, lowest first: the file's bases, the bases of its
    sections, the file's own keys. `origins` maps each dotted key to the file that set it last.
    """
    path = path.resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"{path}: circular 'extends': {chain}")
    return _resolve_section(read_yaml(path), path, origins, prefix, (*_stack, path))


def _resolve_section(data: dict[str, Any], path: Path, origins: dict[str, str], prefix: str,
                     stack: tuple[Path, ...]) -> dict[str, Any]:
    data = dict(data)
    bases = data.pop(EXTENDS_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: key '{prefix}{EXTENDS_KEY}' must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: key '{prefix}{EXTENDS_KEY}': base file not found: {base_path}")
        merged = deep_merge(merged, load_yaml_tree(base_path, origins, prefix, stack))
    for key, value in data.items():
        if isinstance(value, dict):
            data[key] = _resolve_section(value, path, origins, f"{prefix}{key}.", stack)
    for key, value in data.items():
        if not isinstance(value, dict):
            _record_origins(value, f"{prefix}{key}", origins, str(path))
        elif f"{prefix}{key}" not in origins:
            origins[f"{prefix}{key}"] = str(path)
    return deep_merge(merged, data)


# ---------------------------------------------------------------------------------------------
# `--set dotted.key=value` overrides
# ---------------------------------------------------------------------------------------------

# One part of a dotted key: a bare name, or a double-quoted one that may hold dots (`sources."a.b".ratio`).
_KEY_PART = re.compile(r'"([^"]+)"|([^."]+)')


def parse_value(text: str) -> Any:
    """YAML-typed value for an override; also accepts an unquoted `3e-4` (a float) which YAML 1.1 reads as text."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value == text.strip():
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def split_key(dotted: str) -> list[tuple[str, bool]]:
    """The parts of a dotted key as (name, quoted); a ConfigError for an empty part or a stray quote."""
    parts, pos = [], 0
    while True:
        match = _KEY_PART.match(dotted, pos)
        if match is None:
            raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted!r}: empty key or stray '\"' at character {pos + 1}")
        parts.append((match.group(1), True) if match.group(1) is not None else (match.group(2), False))
        pos = match.end()
        if pos == len(dotted):
            return parts
        if dotted[pos] != ".":
            raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted!r}: expected '.' at character {pos + 1}")
        pos += 1


def _branches(tp: Any) -> list[Any]:
    """The alternatives a field's type allows (`A | B | None` -> [A, B]); None is no section."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _branches(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [branch for arg in typing.get_args(tp) for branch in _branches(arg)]
    return [] if tp is type(None) else [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _mapping_value_type(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[1] if len(args) == 2 else Any


def _override_target(model: type[BaseModel], data: Mapping[str, Any],
                     dotted: str) -> tuple[list[tuple[str | int, Any]], list[Any]]:
    """The (key, default) steps `dotted` names in the config tree and the types its value may take.

    Each part must be a field of the section (of any branch, for a union or a nullable section) or a key of
    a mapping; below an `Any` every key is the validator's to judge. A mapping key that holds dots
    (`sources.python3.11-doc.ratio`) is matched against the keys already in `data`, or quoted. `default`
    is what the field holds when the files leave it out (None where there is no one default).
    """
    parts = split_key(dotted)
    steps: list[tuple[str | int, Any]] = []
    candidates: list[Any] = [model]
    node: Any = data
    i = 0
    while i < len(parts):
        if any(c is Any for c in candidates):
            return steps + [(name, None) for name, _ in parts[i:]], [Any]
        models = [c for c in candidates if _is_model(c)]
        mappings = [c for c in candidates if _is_mapping_type(c)]
        lists = [c for c in candidates if typing.get_origin(c) in (list, tuple) or c in (list, tuple)]
        parent = ".".join(str(key) for key, _ in steps)
        if lists and not models and not mappings:
            items = node if isinstance(node, list) else _list_default(steps[-1][1]) if node is _ABSENT else []
            index, step = _list_entry(items, parts, i, dotted, parent)
            steps.append((index, items[index]))
            candidates = [branch for tp in lists for branch in _branches(_item_type(tp, index))]
            node = items[index]
            i += step
            continue
        name, quoted = parts[i]
        step = 1
        if mappings and not quoted and not any(name in m.model_fields for m in models) and isinstance(node, dict):
            for n in range(len(parts) - i, 1, -1):
                run = parts[i:i + n]
                joined = ".".join(part for part, _ in run)
                if not any(was_quoted for _, was_quoted in run) and joined in node:
                    name, step = joined, n
                    break
        fields = [m.model_fields[name] for m in models if name in m.model_fields]
        found = [f.annotation for f in fields]
        found += [_mapping_value_type(c) for c in mappings]
        if not found:
            if models:
                names = sorted({f for m in models for f in m.model_fields})
                so_far = f"{parent}.{name}" if parent else name
                raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted}: unknown key '{so_far}'" + _suggest(name, names))
            raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted}: '{parent}' is not a section, has no key '{name}'")
        steps.append((name, fields[0].get_default(call_default_factory=True) if len(fields) == 1 else None))
        candidates = [branch for tp in found for branch in _branches(tp)]
        node = node.get(name, _ABSENT) if isinstance(node, dict) else None
        i += step
    return steps, candidates


# What `_override_target` walks when the files leave a key out (its default then stands in).
_ABSENT = object()


def _list_default(default: Any) -> list[Any]:
    """The raw entries of a list field's default, as the files would have written them."""
    if not isinstance(default, list | tuple):
        return []
    return [item.model_dump(mode="json") if isinstance(item, BaseModel) else copy.deepcopy(item) for item in default]


def _item_type(tp: Any, index: int) -> Any:
    """The type of entry `index` of a `list[X]` / `tuple[A, B]` / `tuple[X, ...]` field."""
    args = typing.get_args(tp)
    if not args:
        return Any
    if typing.get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return args[index] if index < len(args) else Any
    return args[0]


def _list_entry(items: Sequence[Any], parts: Sequence[tuple[str, bool]], i: int, dotted: str,
                parent: str) -> tuple[int, int]:
    """(index, parts used) of the list entry `parts[i]` names: an index (`sources.0`) or an entry's `name`.

    A name may hold dots (`sources.python3.11-doc.path`); a quoted part (`sources."0"`) is always a name.
    """
    name, quoted = parts[i]
    if name.isdigit() and not quoted:
        if int(name) < len(items):
            return int(name), 1
        raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted}: '{parent}' has {len(items)} entries"
                          + (f" (0-{len(items) - 1})" if items else "") + f", no index {name}")
    names = [item["name"] for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]
    for n in range(len(parts) - i, 0, -1):
        run = parts[i:i + n]
        if n > 1 and any(was_quoted for _, was_quoted in run):
            continue
        joined = ".".join(part for part, _ in run)
        if joined in names:
            return names.index(joined), n
    known = ", ".join(names) if names else "none have a 'name'"
    raise ConfigError(f"{OVERRIDE_ORIGIN} {dotted}: '{parent}' is a list; '{name}' is neither an index "
                      f"(0-{len(items) - 1}) nor the name of an entry (names: {known})" if items else
                      f"{OVERRIDE_ORIGIN} {dotted}: '{parent}' has no entries to set")


def _section_default(default: Any) -> Any:
    """The raw tree a section the files leave out starts from, so that `--set` changes only the key it names."""
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    if isinstance(default, Mapping):
        return copy.deepcopy(dict(default))
    if isinstance(default, list | tuple):
        return _list_default(default)
    return {}


def _as_model(tp: Any) -> type[BaseModel] | None:
    models = [branch for branch in _branches(tp) if _is_model(branch)]
    return models[0] if len(models) == 1 else None


def _is_mapping_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return tp is dict or origin is dict or (isinstance(origin, type) and issubclass(origin, Mapping))


def _suggest(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _override_value(text: str, candidates: Sequence[Any]) -> Any:
    """`text` as YAML, except that a key only a string can hold keeps it as written (`mem=0`, `env.X=1`)."""
    value = parse_value(text)
    if candidates and all(c is str for c in candidates) and isinstance(value, bool | int | float):
        return text.strip()
    return value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], model: type[BaseModel], origins: dict[str, str]
) -> dict[str, Any]:
    """Apply `key=value` strings to the raw config tree, checking each key against `model`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{OVERRIDE_ORIGIN} {item!r}: expected dotted.key=value")
        dotted, text = item.split("=", 1)
        steps, candidates = _override_target(model, data, dotted.strip())
        node: Any = data
        for n, (key, default) in enumerate(steps[:-1]):
            kind = list if isinstance(steps[n + 1][0], int) else dict
            child = node[int(key)] if isinstance(node, list) else node.get(key)
            if not isinstance(child, kind):
                child = _section_default(default) if isinstance(node, dict) and key not in node else kind()
                child = child if isinstance(child, kind) else kind()
                node[key] = child
            node = child
        key = steps[-1][0]
        node[key] = _override_value(text, candidates)
        _record_origins(node[key], ".".join(str(k) for k, _ in steps), origins, OVERRIDE_ORIGIN)
    return data


# ---------------------------------------------------------------------------------------------
# Validation with errors that name file and key
# ---------------------------------------------------------------------------------------------


def _origin_of(dotted: str, origins: Mapping[str, str], default: str) -> str:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:n]))
        if origin:
            return origin
    return default


def _model_at(model: type[BaseModel], parts: Sequence[Any]) -> type[BaseModel] | None:
    """The config model that holds the key at `parts` (its parent section), if it is one."""
    current: Any = model
    for part in parts[:-1]:
        sub = _as_model(current)
        if sub is not None and part in sub.model_fields:
            current = sub.model_fields[part].annotation
        elif _is_mapping_type(current) or typing.get_origin(current) in (list, tuple):
            args = typing.get_args(current)
            current = args[-1] if args else Any
        else:
            return None
    return _as_model(current)


def format_validation_error(exc: ValidationError, origins: Mapping[str, str], default: str,
                            model: type[BaseModel] | None = None) -> str:
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"]) or "<root>"
        where = _origin_of(dotted, origins, default)
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, err["loc"]) if model is not None else None
            what = "unknown key" + (_suggest(str(err["loc"][-1]), parent.model_fields) if parent else "")
        elif err["type"] == "missing":
            what = "missing required key"
            where = default
        elif isinstance(err.get("input"), Mapping | list):  # a check across keys: its message names them
            what = err["msg"].removeprefix("Value error, ")
        else:
            what = f"{err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})"
        lines.append(f"{where}: {what}" if dotted == "<root>" else f"{where}: key '{dotted}': {what}")
    return "; ".join(lines)


def validate(model: type[C], data: Mapping[str, Any], origins: Mapping[str, str] | None = None,
             source: str = "<config>") -> C:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origins or {}, source, model)) from None


def load_config(model: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
    """Read `path` (with its `extends:` chain), apply `--set` overrides and validate against `model`."""
    path = Path(path)
    origins: dict[str, str] = {}
    data = load_yaml_tree(path, origins)
    data = apply_overrides(data, overrides, model, origins)
    return validate(model, data, origins, str(path.resolve()))


# Seeds feed numpy's SeedSequence (non-negative only) and torch.manual_seed (at most 64 bits).
MAX_SEED = 2**63 - 1


def slurm_time_seconds(text: str) -> float:
    """Seconds in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED; ValueError otherwise."""
    if text in ("UNLIMITED", "INFINITE"):
        return math.inf
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    fields = clock.split(":")
    if not (days.isdigit() and 1 <= len(fields) <= 3 and all(f.isdigit() for f in fields)):
        raise ValueError(f"{text!r} is not a SLURM time limit (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    numbers = [int(f) for f in fields]
    if "-" in text:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"time limit {text!r} must be positive")
    return total


def _check_slurm_time(text: str) -> str:
    slurm_time_seconds(text)
    return text


# A SLURM `--time` value, checked when the config is loaded rather than when sbatch refuses it.
SlurmTime = Annotated[str, AfterValidator(_check_slurm_time)]


class RunConfig(ConfigModel):
    """Where a stage writes and with which seed; every stage config has one under `run:`."""

    dir: str
    seed: int = Field(0, ge=0, le=MAX_SEED)
    overwrite: bool = False


class StageConfig(ConfigModel):
    """A stage's config: its own sections beside `run:` (where it writes, with which seed)."""

    run: RunConfig
