"""`atom tokenize`: curated Parquet shards -> token shards + provenance table + manifest + Croissant.

Documents are read in the curated run's fixed order (files by name, rows in order), encoded in batches
with `tokenizers` by datatrove tasks (`executor`, see encode_tasks.py), and written with datatrove's
`TokenizedFile` (flat `.ds` + `.ds.index`), the end-of-document token after each document. A shard is
closed once it holds `shard_tokens` tokens; documents are never split. Every check on the input
(contract, licenses, vocab vs dtype) runs before the first byte is written.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from core.config import ConfigError, ConfigModel, StageConfig
from core.manifest import code_version, content_name, file_record, recorded_config, sha256_file
from core.rundir import RunDir, recorded_inputs, write_json
from core.stage import Stage
from data_pipeline.curate.config import SlurmConfig
from data_pipeline.tokenizer.train import FILES as TOKENIZER_FILES
from data_pipeline.tokenizer.train import TOKENIZER_FILE
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.curated import CuratedRun, open_curated
from data_pipeline.tokens.encode_tasks import LOGS_DIR, PARTS_DIR, WORK_DIR, EncodeFiles, read_parts
from data_pipeline.tokens.encoding import open_tokenizer
from data_pipeline.tokens.manifest import DatasetManifest


class TokenizeExecutorConfig(ConfigModel):
    """How the encoding is spread (see encode_tasks.py): tasks over curated files, run `workers` at a time,
    here or as a SLURM job array (datatrove's executors, as curation). The output does not depend on any of
    it, so it may change when a run resumes."""

    kind: Literal["local", "slurm"] = "local"
    tasks: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    slurm: SlurmConfig = Field(default_factory=lambda: SlurmConfig(job_name="atom-tokenize"))

    @model_validator(mode="after")
    def _waits(self) -> TokenizeExecutorConfig:
        if self.kind == "slurm" and not self.slurm.wait:
            raise ValueError("executor.slurm.wait=false: tokenize writes its shards once every encode task has "
                             "finished, so it waits for the job array")
        return self


class TokenizeConfig(StageConfig):
    input: str  # curated run directory
    tokenizer: str  # tokenizer directory (from `atom tokenizer`)
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    shard_tokens: int = Field(100_000_000, ge=1)  # close a shard once it holds this many tokens
    batch_size: int = Field(1000, ge=1)  # documents per encode_batch call
    allow_licenses: list[str] | None = None  # SPDX ids; None: any non-empty license
    verify_inputs: bool = True  # check curated shards against the curation manifest's file records
    # Chat/reasoning data (`atom synth`) writes its ChatML and <think> markers as text on purpose: true
    # encodes them as their special-token ids. Web text keeps the default: a marker in it is plain text.
    special_tokens_in_text: bool = False
    executor: TokenizeExecutorConfig = Field(default_factory=TokenizeExecutorConfig)


def plan(config: TokenizeConfig) -> list[str]:
    return [
        f"check curated run {config.input} (columns, ids, sources, licenses, file hashes)",
        f"encode documents with {config.tokenizer}/{TOKENIZER_FILE}, end-of-document token after each "
        f"({config.executor.tasks} task(s), {config.executor.workers} worker(s))",
        f"write {fmt.TOKENS_DIR}/NNNNN.ds(.index) shards of ~{config.shard_tokens} tokens ({config.dtype})",
        f"write {fmt.PROVENANCE}, {fmt.MANIFEST} and {fmt.CROISSANT} to {config.run.dir}",
    ]


class _ProvenanceWriter:
    """Streams provenance rows into Parquet row groups of a fixed size (independent of batch size)."""

    def __init__(self, path: Path):
        self.path = path
        self.writer = pq.ParquetWriter(path, fmt.PROVENANCE_SCHEMA, compression="zstd")
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.n_pending += table.num_rows
        while self.n_pending >= fmt.PROVENANCE_ROW_GROUP:
            self._flush(fmt.PROVENANCE_ROW_GROUP)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()
        self.writer.write_table(table.slice(0, n), row_group_size=n)
        rest = table.slice(n)
        self.pending = [rest] if rest.num_rows else []
        self.n_pending = rest.num_rows
        self.rows += n

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)
        self.writer.close()


class ShardWriter:
    """Writes documents' tokens into size-capped `.ds` shards and their provenance rows."""

    def __init__(self, root: Path, dtype: str, shard_tokens: int, provenance: _ProvenanceWriter):
        from datatrove.pipeline.tokens.tokenizer import TokenizedFile

        self._file_cls = TokenizedFile
        self.root = root
        self.dtype = np.dtype(fmt.DTYPES[dtype]).newbyteorder("<")
        self.shard_tokens = shard_tokens
        self.provenance = provenance
        self.shards: list[dict[str, Any]] = []
        self.current: Any = None  # the open datatrove token file of the shard being written
        self.current_tokens = 0
        self.current_docs = 0
        self.n_tokens = 0
        self.n_docs = 0

    def _open(self) -> None:
        name = fmt.shard_name(len(self.shards))
        # An absolute path: fsspec caches filesystems by their arguments, and a relative one would keep
        # pointing at the working directory of the first call in this process.
        self.current = self._file_cls(str(self.root.resolve()), name, save_index=True, save_final_metadata=False,
                                      token_size=self.dtype.itemsize)
        self.current_name = name
        self.current_tokens = self.current_docs = 0
        self.current_start = self.n_tokens
        self.current_doc_start = self.n_docs

    def _close(self) -> None:
        self.current.close()
        self.shards.append({
            "path": self.current_name,
            "n_tokens": self.current_tokens,
            "n_docs": self.current_docs,
            "token_offset": self.current_start,
            "doc_offset": self.current_doc_start,
        })
        self.current = None

    def add(self, tokens: np.ndarray, doc_lens: np.ndarray, meta: pa.Table) -> None:
        """`tokens`: the documents' tokens back to back (each ending with EOS); `doc_lens` their lengths."""
        ends = np.cumsum(doc_lens)
        i, n = 0, len(doc_lens)
        while i < n:
            if self.current is None:
                self._open()
            base = int(ends[i - 1]) if i else 0
            room = self.shard_tokens - self.current_tokens
            k = min(n, int(np.searchsorted(ends, base + room, side="left")) + 1)
            stop = int(ends[k - 1])
            local_ends = (ends[i:k] - base).tolist()
            self.current.write_bytes(tokens[base:stop].tobytes(), doc_ends=local_ends)
            starts = self.n_tokens + np.concatenate(([0], ends[i:k - 1] - base))
            self.provenance.add(pa.table({
                "doc_index": pa.array(np.arange(self.n_docs, self.n_docs + k - i), pa.int64()),
                "id": meta.column("id").slice(i, k - i),
                "source": meta.column("source").slice(i, k - i),
                "license": meta.column("license").slice(i, k - i),
                "url": meta.column("url").slice(i, k - i),
                "source_version": meta.column("source_version").slice(i, k - i),
                "shard": pa.array([self.current_name] * (k - i), pa.string()),
                "token_start": pa.array(starts, pa.int64()),
                "token_end": pa.array(self.n_tokens + ends[i:k] - base, pa.int64()),
            }, schema=fmt.PROVENANCE_SCHEMA))
            self.current_tokens += stop - base
            self.current_docs += k - i
            self.n_tokens += stop - base
            self.n_docs += k - i
            if self.current_tokens >= self.shard_tokens:
                self._close()
            i = k

    def close(self) -> None:
        if self.current is not None:
            self._close()


def _output_paths(root: Path) -> list[Path]:
    return [root / fmt.TOKENS_DIR, root / fmt.TOKENIZER_DIR, root / fmt.PROVENANCE, root / fmt.MANIFEST,
            root / fmt.CROISSANT]


def _clear(root: Path) -> None:
    for path in _output_paths(root):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_licenses(curated: CuratedRun, allow: list[str] | None) -> None:
    if allow is None:
        return
    outside = sorted(set(curated.licenses) - set(allow))
    if outside:
        counts = ", ".join(f"{lic} ({curated.licenses[lic]} docs)" for lic in outside)
        raise ConfigError(f"{curated.root}: licenses outside allow_licenses {sorted(allow)}: {counts}")


def stage_inputs(config: TokenizeConfig) -> dict[str, str]:
    """The curated run and the tokenizer."""
    return {"input": config.input, "tokenizer": config.tokenizer}


def recorded_tokenize_config(config: TokenizeConfig, curated: CuratedRun, tokenizer_dir: Path) -> dict[str, Any]:
    """The config as the manifest records it, inputs named by content (the same data built anywhere gives
    the same manifest): `input` the sha256 of the curated run's manifest.json (which vouches for every
    shard), `tokenizer` the content name of the tokenizer files."""
    records = [file_record(tokenizer_dir / name, tokenizer_dir) for name in TOKENIZER_FILES]
    recorded = {k: v for k, v in recorded_config(config).items() if k not in UNRECORDED}
    return recorded | {"input": f"sha256:{curated.manifest_sha256}", "tokenizer": content_name(records)}


UNRECORDED = ("executor",)  # settings that do not change a byte of the output: left out of the manifest


def run(config: TokenizeConfig) -> Path:
    from data_pipeline.croissant import write_croissant

    # Everything that can be wrong with the input is found before the run directory is touched.
    curated = open_curated(config.input, verify_outputs=config.verify_inputs)
    check_licenses(curated, config.allow_licenses)
    tokenizer_dir = Path(config.tokenizer)
    tokenizer, tok_info, dtype = open_tokenizer(tokenizer_dir, config.dtype, config.special_tokens_in_text)
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{tokenizer_dir}: tokenizer directory lacks {', '.join(missing)}")

    rundir = RunDir.claim(config.run.dir, "tokenize", config, overwrite=config.run.overwrite,
                          resumable_changes=UNRECORDED, inputs=stage_inputs(config))
    log = rundir.logger()
    root = rundir.path
    _clear(root)
    if config.run.overwrite:
        shutil.rmtree(root / WORK_DIR, ignore_errors=True)  # parts of another config: not reused
    (root / fmt.TOKENS_DIR).mkdir(parents=True)
    (root / fmt.TOKENIZER_DIR).mkdir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, root / fmt.TOKENIZER_DIR / name)

    _encode(root, curated, dtype, config)
    writer, provenance, sources = _write_shards(root, curated, dtype, config)
    manifest = _dataset_manifest(root, config, curated, tokenizer_dir, tok_info, dtype, writer, provenance, sources)
    shards = manifest["shards"]
    DatasetManifest.parse(manifest, f"{root / fmt.MANIFEST} (being written)")
    write_json(root / fmt.MANIFEST, manifest)
    write_croissant(root, manifest)
    shutil.rmtree(root / WORK_DIR)  # the parts are in the shards now
    log.info("tokenize: %d documents, %d tokens (%s) in %d shard(s) -> %s",
             writer.n_docs, writer.n_tokens, dtype, len(shards), root)
    print_summary(root, manifest)
    return root


def _encode(root: Path, curated: CuratedRun, dtype: str, config: TokenizeConfig) -> None:
    """Every curated file encoded into its part under work/parts, by `executor.tasks` datatrove tasks."""
    from data_pipeline.curate.executors import (
        LocalExecutor,
        SlurmArrayExecutor,
        route_datatrove_logs,
        wait_for_completions,
    )

    route_datatrove_logs()
    step = EncodeFiles([str(f.resolve()) for f in curated.files], str((root / PARTS_DIR).resolve()),
                       str(Path(config.tokenizer).resolve()), dtype, config.special_tokens_in_text, config.batch_size)
    ex = config.executor
    logging_dir = root.resolve() / LOGS_DIR
    if ex.kind == "local":
        LocalExecutor([step], tasks=ex.tasks, workers=min(ex.workers, ex.tasks), logging_dir=str(logging_dir),
                      skip_completed=True).run()
        return
    s = ex.slurm
    slurm_logs = root.resolve() / WORK_DIR / "slurm_logs"
    SlurmArrayExecutor([step], tasks=ex.tasks, workers=ex.workers, time=s.time, partition=s.partition,
                  cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos, job_name=s.job_name,
                  env_command=s.env_command or f"source {Path(sys.prefix) / 'bin' / 'activate'}",
                  sbatch_args=dict(s.sbatch_args), logging_dir=str(logging_dir), slurm_logs_folder=str(slurm_logs),
                  skip_completed=True, mail_type="NONE").run()
    wait_for_completions([logging_dir / "completions" / f"{rank:05d}" for rank in range(ex.tasks)], s, slurm_logs)


def _write_shards(root: Path, curated: CuratedRun, dtype: str, config: TokenizeConfig
                  ) -> tuple[ShardWriter, _ProvenanceWriter, dict[str, dict[str, Any]]]:
    """The encoded parts, in file order, into shards and the provenance table; per source, its tokens,
    documents and documents per license."""
    provenance = _ProvenanceWriter(root / fmt.PROVENANCE)
    writer = ShardWriter(root, dtype, config.shard_tokens, provenance)
    sources: dict[str, dict[str, Any]] = {}
    for tokens, lens, meta in read_parts(root / PARTS_DIR, len(curated.files), dtype, config.batch_size):
        meta = meta.cast(pa.schema([(name, pa.string()) for name in meta.column_names]))
        writer.add(tokens, lens, meta)
        counts = pa.table({"source": meta.column("source"), "license": meta.column("license"),
                           "n": pa.array(lens, pa.int64())})
        for row in counts.group_by(["source", "license"]).aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            entry = sources.setdefault(row["source"], {"tokens": 0, "docs": 0, "licenses": {}})
            entry["tokens"] += row["n_sum"]
            entry["docs"] += row["n_count"]
            entry["licenses"][row["license"]] = entry["licenses"].get(row["license"], 0) + row["n_count"]
    writer.close()
    provenance.close()
    return writer, provenance, sources


def _dataset_manifest(root: Path, config: TokenizeConfig, curated: Any, tokenizer_dir: Path,
                      tok_info: dict[str, Any], dtype: str, writer: ShardWriter, provenance: _ProvenanceWriter,
                      sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shards = []
    for shard in writer.shards:
        path = root / shard["path"]
        shards.append({**file_record(path, root), **shard,
                       "index": file_record(path.with_name(path.name + fmt.INDEX_SUFFIX), root)})
    return {
        "schema": fmt.DATASET_SCHEMA,
        "kind": "dataset",
        "code_version": code_version(),
        "config": recorded_tokenize_config(config, curated, tokenizer_dir),
        "dtype": dtype,
        "eos_appended": True,
        "n_tokens": writer.n_tokens,
        "n_docs": writer.n_docs,
        "shards": shards,
        "provenance": {**file_record(root / fmt.PROVENANCE, root), "rows": provenance.rows},
        "sources": {name: {**v, "licenses": dict(sorted(v["licenses"].items()))}
                    for name, v in sorted(sources.items())},
        "tokenizer": {
            **tok_info,
            "sha256": sha256_file(root / fmt.TOKENIZER_DIR / TOKENIZER_FILE),
            "files": [file_record(root / fmt.TOKENIZER_DIR / name, root) for name in TOKENIZER_FILES],
        },
        "curation": curated.inherited(),
        "inputs": recorded_inputs(root),
    }


def print_summary(root: Path, manifest: dict[str, Any]) -> None:
    """What the stage wrote, on the console: a successful run would otherwise be silent."""
    print(f"atom tokenize: {root}")
    print(f"  tokens: {manifest['n_tokens']:,} ({manifest['dtype']}) from {manifest['n_docs']:,} documents in "
          f"{len(manifest['shards'])} shard(s) under {root / fmt.TOKENS_DIR}")
    for name, source in manifest["sources"].items():
        licenses = ", ".join(source["licenses"])
        print(f"  source {name}: {source['tokens']:,} tokens, {source['docs']:,} documents ({licenses})")
    print(f"  provenance: {manifest['provenance']['rows']:,} rows in {root / fmt.PROVENANCE}; "
          f"tokenizer copied to {root / fmt.TOKENIZER_DIR}")


STAGE = Stage(
    name="tokenize",
    summary="tokenize a curated run into token shards with a provenance table and manifest",
    config_cls=TokenizeConfig,
    plan=plan,
    run=run,
    inputs=stage_inputs,
)
