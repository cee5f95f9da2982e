"""`atom longdocs CONFIG`: select the long documents of a curated run, for long-context mid-training.

Long-context data is documents long enough to fill the new context (OLMo 3 and others select by
length per source). The output is a curated run (the contract `atom tokenize` reads): the selected
documents unchanged, in input order, with a manifest that inherits the input's curation counts and adds
this selection as one more stage (kept, and dropped as `too_short` or `source_not_selected`).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from core.config import ConfigError, StageConfig
from core.manifest import code_version, file_record, recorded_config_sha256
from core.rundir import RunDir, recorded_inputs, write_json
from core.stage import Stage
from data_pipeline.tokens.curated import COLUMNS, CURATED_DIR, CURATION_SCHEMA, CuratedRun, open_curated

ROWS_PER_FILE = 50_000


class LongDocsConfig(StageConfig):
    input: str  # a curated run
    min_chars: int = Field(gt=0)  # default threshold for every source
    per_source: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)  # source -> its own threshold
    sources: list[str] | None = None  # only these sources (None: all)


def threshold(cfg: LongDocsConfig, source: str) -> int | None:
    if cfg.sources is not None and source not in cfg.sources:
        return None
    return cfg.per_source.get(source, cfg.min_chars)


def drop_reason(cfg: LongDocsConfig, source: str, text: str) -> str | None:
    """Why a document is not selected (None: it is): the selection rule, shared with the audit."""
    limit = threshold(cfg, source)
    if limit is None:
        return "source_not_selected"
    return "too_short" if len(text) < limit else None


def plan(cfg: LongDocsConfig) -> list[str]:
    return [f"read curated run {cfg.input}",
            f"keep documents of at least {cfg.min_chars} characters (per source: {cfg.per_source or 'none'}), "
            f"sources {cfg.sources or 'all'}",
            f"write {cfg.run.dir}/{CURATED_DIR}/*.parquet and manifest.json"]


def stage_inputs(cfg: LongDocsConfig) -> dict[str, str]:
    """The curated run long documents are selected from."""
    return {"input": cfg.input}


def run(cfg: LongDocsConfig) -> Path:
    curated = open_curated(cfg.input)
    unknown = sorted(s for s in set(cfg.per_source) | set(cfg.sources or []) if s not in curated.sources)
    if unknown:
        raise ConfigError(f"per_source/sources: {', '.join(unknown)} not in {cfg.input} "
                          f"(sources: {', '.join(sorted(curated.sources))})")
    run_dir = RunDir.claim(cfg.run.dir, "longdocs", cfg, cfg.run.overwrite, inputs=stage_inputs(cfg))
    out_dir = run_dir.file(CURATED_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    chosen = _select(cfg, curated, out_dir, run_dir.path)
    kept = sum(chosen.kept_by_source.values())
    if kept == 0:
        raise ConfigError(f"min_chars: no document of {cfg.input} is long enough ({chosen.docs_in} documents read)")
    inherited = curated.manifest
    stage = {"name": "longdocs", "documents_in": chosen.docs_in, "documents_kept": kept,
             "dropped": dict(chosen.dropped), "bytes_in": chosen.bytes_in, "bytes_out": chosen.bytes_out}
    sources = {name: {**(inherited.get("sources") or {}).get(name, {}), "documents": chosen.kept_by_source[name],
                      "bytes": chosen.bytes_by_source[name]} for name in sorted(chosen.kept_by_source)}
    write_json(run_dir.file("manifest.json"), {
        "schema": CURATION_SCHEMA, "sources": sources, "stages": [*inherited.get("stages", []), stage],
        "quarantine": inherited.get("quarantine", {}), "outputs": chosen.outputs,
        "config_sha256": recorded_config_sha256(cfg),
        "parent": {"path": cfg.input, "manifest_sha256": curated.manifest_sha256},
        "inputs": recorded_inputs(run_dir.path),
        "code_version": code_version()})
    run_dir.logger().info(f"longdocs: kept {kept} of {chosen.docs_in} documents ({dict(chosen.dropped)})")
    return run_dir.path


@dataclass
class _Selection:
    """What selection kept and dropped, and the shards it wrote."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    kept_by_source: Counter[str] = field(default_factory=Counter)
    bytes_by_source: Counter[str] = field(default_factory=Counter)
    docs_in: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _select(cfg: LongDocsConfig, curated: CuratedRun, out_dir: Path, run_root: Path) -> _Selection:
    """Keep each document at least its source's threshold long; write the kept ones in shards of
    ROWS_PER_FILE rows, in input order."""
    chosen = _Selection()
    pending: list[pa.Table] = []

    def flush() -> None:
        if not pending:
            return
        table = pa.concat_tables(pending)
        path = out_dir / f"{len(chosen.outputs):05d}.parquet"
        pq.write_table(table, path)
        chosen.outputs.append({**file_record(path, run_root), "documents": table.num_rows})
        pending.clear()

    for _, batch in curated.batches(10_000):
        table = pa.Table.from_batches([batch]).select(list(COLUMNS))
        keep = []
        for row in table.to_pylist():
            size = len(row["text"].encode())
            chosen.docs_in += 1
            chosen.bytes_in += size
            reason = drop_reason(cfg, row["source"], row["text"])
            keep.append(reason is None)
            if reason is not None:
                chosen.dropped[reason] += 1
                continue
            chosen.kept_by_source[row["source"]] += 1
            chosen.bytes_by_source[row["source"]] += size
            chosen.bytes_out += size
        pending.append(table.filter(pa.array(keep)))
        if sum(t.num_rows for t in pending) >= ROWS_PER_FILE:
            flush()
    flush()
    return chosen


STAGE = Stage("longdocs", "select long documents of a curated run (long-context mid-training data)",
              LongDocsConfig, plan, run, stage_inputs)
