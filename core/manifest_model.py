"""The base of every typed manifest: strict about keys and types, versioned, validated on read.

A manifest is written by atom and read back by atom (and by auditors), so unlike a config it has no
reason to hold an unknown key or a string where a number belongs: either means a different schema
version or a hand edit, and the reader says which file, which key and which version it found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core.config import ConfigError

V = TypeVar("V", bound="VersionedManifest")


class ManifestError(ConfigError, ValueError):
    """A manifest file that does not validate against the schema version this atom reads (a ValueError too,
    so an audit that reports unreadable records as a failed check reports this one the same way)."""


class ManifestModel(BaseModel):
    """A part of a manifest: unknown keys and mistyped values are errors (no coercion of "5" to 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The dict written to disk (every key, None included, so the bytes match earlier writers)."""
        return self.model_dump(mode="json", by_alias=True)


class VersionedManifest(ManifestModel):
    """A whole manifest file: its `schema` field names the format and version (e.g. "atom.release/1")."""

    SCHEMAS: ClassVar[tuple[str, ...]] = ()  # the versions this atom reads, newest last

    @classmethod
    def parse(cls: type[V], data: Any, where: str) -> V:
        """Validate `data` read from `where`; the error names the file, the key and the schema version."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        version = data.get("schema")
        supported = ", ".join(cls.SCHEMAS)
        if version not in cls.SCHEMAS:
            raise ManifestError(f"{where}: schema {version!r} is not a version this atom reads "
                                f"(it reads {supported}); use the atom release that wrote it")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(f"{where} ({version}): " + describe(exc)) from None

    @classmethod
    def read(cls: type[V], path: Path) -> V:
        """The manifest at `path`, validated; unreadable or invalid JSON is a ManifestError naming the file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None
        except ValueError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from None
        return cls.parse(data, str(path))


def describe(exc: ValidationError, limit: int = 3) -> str:
    """The first few problems of a validation error as `key.path: message` (keys dotted, list items [i])."""
    parts = []
    for err in exc.errors()[:limit]:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        parts.append(f"{key}: {err['msg'].lower()}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
