"""The input contract with curation: `<run>/curated/*.parquet` plus `<run>/manifest.json`.

Everything here is read-only and checks the contract before any stage writes a byte: required columns
and their types, no nulls or empty `id`/`source`/`license`, unique document ids, the curation manifest's
schema, and (when the manifest lists its outputs) that every shard is the one curation vouched for.
Documents are always read in the same order: files sorted by name, rows in file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.config import ConfigError
from core.manifest import sha256_file, verify_file_record

CURATION_SCHEMA = "atom.curation/1"
CURATED_DIR = "curated"
MANIFEST = "manifest.json"
COLUMNS = ("id", "text", "source", "license", "url", "source_version", "language")
NON_EMPTY = ("id", "source", "license")


@dataclass
class CuratedRun:
    """A validated curated run: its files in reading order and the manifest it inherits counts from."""

    root: Path
    files: list[Path]
    manifest: dict[str, Any]
    manifest_sha256: str
    n_docs: int
    sources: dict[str, int] = field(default_factory=dict)  # source -> documents
    licenses: dict[str, int] = field(default_factory=dict)  # license -> documents

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def inherited(self) -> dict[str, Any]:
        """What a dataset manifest copies from curation: identity and the stage counts."""
        return {
            "manifest_sha256": self.manifest_sha256,
            "schema": self.manifest.get("schema"),
            "config_sha256": self.manifest.get("config_sha256"),
            "sources": self.manifest.get("sources"),
            "stages": self.manifest.get("stages"),
            "quarantine": self.manifest.get("quarantine"),
        }

    def batches(self, batch_size: int, columns: tuple[str, ...] = COLUMNS) -> Iterator[tuple[Path, pa.RecordBatch]]:
        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns)):
                yield path, batch


def _check_types(path: Path, schema: pa.Schema) -> None:
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ConfigError(
            f"{path}: curated shard is missing column(s) {', '.join(missing)} "
            f"(required: {', '.join(COLUMNS)})"
        )
    for name in COLUMNS:
        typ = schema.field(name).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ConfigError(f"{path}: column '{name}' must be a string column, got {typ}")


def open_curated(root: str | Path, verify_outputs: bool = True) -> CuratedRun:
    """Check a curated run against the input contract; ConfigError (nothing written) if it breaks it."""
    root = Path(root)
    manifest_path = root / MANIFEST
    manifest = _curation_manifest(root, manifest_path)
    files = sorted((root / CURATED_DIR).glob("*.parquet"))
    if not files:
        raise ConfigError(f"{root / CURATED_DIR}: no curated *.parquet shards")
    if verify_outputs and manifest.get("outputs"):
        _verify_outputs(root, manifest_path, manifest, files)
    n_docs, sources, licenses, ids = _read_shards(files)
    if n_docs == 0:
        raise ConfigError(f"{root / CURATED_DIR}: curated shards hold no documents")
    all_ids = pa.chunked_array(
        [chunk for col in ids for chunk in col.cast(pa.large_string()).chunks], type=pa.large_string()
    )
    if pc.count_distinct(all_ids).as_py() != n_docs:
        counts = pc.value_counts(all_ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise ConfigError(f"{root / CURATED_DIR}: document ids must be unique; '{dup}' appears more than once")
    return CuratedRun(root, files, manifest, sha256_file(manifest_path), n_docs,
                      dict(sorted(sources.items())), dict(sorted(licenses.items())))


def _curation_manifest(root: Path, manifest_path: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ConfigError(f"{root}: curated run directory not found")
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: curated run has no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{manifest_path}: unreadable JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != CURATION_SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise ConfigError(f"{manifest_path}: schema must be '{CURATION_SCHEMA}', got {got!r}")
    return manifest


def _verify_outputs(root: Path, manifest_path: Path, manifest: dict[str, Any], files: list[Path]) -> None:
    """Every shard is listed in the manifest's `outputs` with the bytes and sha256 it has."""
    recorded = {}
    for record in manifest["outputs"]:
        if not isinstance(record, dict) or not {"path", "bytes", "sha256"} <= record.keys():
            raise ConfigError(f"{manifest_path}: 'outputs' entries must be file records (path, bytes, sha256)")
        recorded[record["path"]] = record
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel not in recorded:
            raise ConfigError(f"{path}: curated shard is not listed in {manifest_path} 'outputs'")
        problem = verify_file_record(recorded[rel], root)
        if problem:
            raise ConfigError(f"{root}: curated shard does not match its manifest: {problem}")


def _read_shards(files: list[Path]) -> tuple[int, dict[str, int], dict[str, int], list[pa.ChunkedArray]]:
    """Documents, documents per source and per license, and the id columns of the shards; a shard with a
    wrong type, a null or an empty required value is a ConfigError naming it."""
    n_docs = 0
    sources: dict[str, int] = {}
    licenses: dict[str, int] = {}
    seen_ids: list[pa.ChunkedArray] = []
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{path}: not a readable Parquet file: {exc}") from None
        _check_types(path, parquet.schema_arrow)
        table = parquet.read(columns=list(NON_EMPTY))
        n_docs += table.num_rows
        for name in NON_EMPTY:
            col = table.column(name)
            if col.null_count:
                raise ConfigError(f"{path}: column '{name}' has {col.null_count} null value(s)")
            empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)).as_py() or 0
            if empty:
                raise ConfigError(f"{path}: column '{name}' is empty in {empty} document(s)")
        text_nulls = _null_count(parquet, "text")
        if text_nulls:
            raise ConfigError(f"{path}: column 'text' has {text_nulls} null value(s)")
        for value in pc.value_counts(table.column("source")).to_pylist():
            sources[value["values"]] = sources.get(value["values"], 0) + value["counts"]
        for value in pc.value_counts(table.column("license")).to_pylist():
            licenses[value["values"]] = licenses.get(value["values"], 0) + value["counts"]
        seen_ids.append(table.column("id"))
    return n_docs, sources, licenses, seen_ids


def _null_count(parquet: pq.ParquetFile, column: str) -> int:
    meta = parquet.metadata
    idx = parquet.schema_arrow.get_field_index(column)
    total = 0
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(idx).statistics
        if stats is None or not stats.has_null_count:
            return parquet.read(columns=[column]).column(column).null_count
        total += stats.null_count
    return total
