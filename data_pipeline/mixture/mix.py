"""`atom mix`: a deterministic sequence of documents from token datasets for a target token budget.

Each configured source gets a token target (`tokens`, or `ratio` x `target_tokens`). Its documents are
taken in a seeded random order, one full pass (epoch) after another, until the target is reached, so no
document repeats before every document of its source has appeared, and a source overshoots its target
by less than one document. A target that needs more than `max_repetitions` passes over a source's
tokens is an error before anything is written. Sources are then interleaved so that every source's
progress through its target advances evenly along the sequence (a document is placed at the point
where its source is halfway through it).

The mixture references tokens, it does not copy them: `sequence.npy` (memory-mappable records of
dataset, shard, start, length, document, epoch, cumulative end) and `sequence.parquet` (the same
documents with id, source, license) plus `manifest.json` with targets, realised ratios and repetitions.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from core.config import ConfigError, ConfigModel, StageConfig
from core.manifest import code_version, file_record, recorded_config, sha256_file
from core.rundir import RunDir, recorded_inputs, write_json
from core.stage import Stage
from data_pipeline.croissant import write_croissant
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.manifest import MixtureManifest
from data_pipeline.tokens.reader import TokenDataset


class SourceMix(ConfigModel):
    ratio: float | None = Field(None, gt=0, le=1)  # share of target_tokens
    tokens: int | None = Field(None, ge=1)  # or an absolute token count
    max_repetitions: float | None = Field(None, gt=0)  # overrides the mix-wide cap for this source

    @model_validator(mode="after")
    def _one_target(self) -> SourceMix:
        if (self.ratio is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'ratio' or 'tokens'")
        return self


class MixConfig(StageConfig):
    datasets: list[str] = Field(min_length=1)  # token dataset directories (from `atom tokenize`)
    target_tokens: int = Field(ge=1)
    max_repetitions: float = Field(4.0, gt=0)  # most passes over any source's tokens
    sources: dict[str, SourceMix] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> MixConfig:
        out = targets(self)
        total = sum(out.values())
        if abs(total - self.target_tokens) > len(out):
            raise ValueError(
                f"sources: targets add up to {total} tokens but target_tokens is {self.target_tokens} "
                f"({', '.join(f'{k}: {v}' for k, v in out.items())}); ratios must sum to 1"
            )
        return self


def targets(config: MixConfig) -> dict[str, int]:
    """Token target per source; a loaded config's add up to target_tokens (checked by MixConfig)."""
    return {name: s.tokens if s.tokens is not None else round((s.ratio or 0.0) * config.target_tokens)
            for name, s in sorted(config.sources.items())}


def plan(config: MixConfig) -> list[str]:
    steps = [f"read provenance of {len(config.datasets)} dataset(s): {', '.join(config.datasets)}"]
    for name, tokens in targets(config).items():
        cap = config.sources[name].max_repetitions or config.max_repetitions
        steps.append(f"source {name}: {tokens} tokens (at most {cap} passes over its tokens)")
    steps.append(f"write {fmt.SEQUENCE_ARRAY}, {fmt.SEQUENCE_TABLE}, {fmt.MANIFEST}, {fmt.CROISSANT} "
                 f"to {config.run.dir}")
    return steps


def _documents(datasets: list[TokenDataset]) -> pa.Table:
    """Every document of every dataset: dataset, doc, shard, start (in shard), length, id, source, license."""
    tables = []
    for d, ds in enumerate(datasets):
        prov = pq.read_table(ds.root / ds.manifest["provenance"]["path"],
                             columns=["doc_index", "id", "source", "license", "shard", "token_start", "token_end"])
        shard_index = {s["path"]: i for i, s in enumerate(ds.manifest["shards"])}
        offsets = np.array([s.token_offset for s in ds.shards], dtype=np.int64)
        shard = _codes(prov.column("shard"), shard_index)
        start = prov.column("token_start").to_numpy()
        tables.append(pa.table({
            "dataset": pa.array(np.full(prov.num_rows, d), pa.int32()),
            "doc_index": prov.column("doc_index"),
            "shard": pa.array(shard, pa.int64()),
            "start": pa.array(start - offsets[shard], pa.int64()),
            "length": pa.array(prov.column("token_end").to_numpy() - start, pa.int64()),
            "id": prov.column("id"),
            "source": prov.column("source"),
            "license": prov.column("license"),
        }))
    return pa.concat_tables(tables)


def _codes(column: pa.ChunkedArray, code_of: dict[str, int]) -> np.ndarray:
    """Each row's code (`code_of[value]`), through a dictionary encoding: no Python object per row."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    table = np.array([code_of[v] for v in encoded.dictionary.to_pylist()], dtype=np.int64)
    return table[encoded.indices.to_numpy(zero_copy_only=False)] if len(encoded) else np.zeros(0, np.int64)


def _names(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct values of a string column, sorted, and each row's index into them."""
    names = sorted(v for v in pc.unique(column).to_pylist())
    return names, _codes(column, {name: i for i, name in enumerate(names)})


def _open_datasets(config: MixConfig) -> list[TokenDataset]:
    datasets = []
    for path in config.datasets:
        if not Path(path).is_dir():
            raise ConfigError(f"mix: dataset directory not found: {path}")
        datasets.append(TokenDataset(path))
    first = datasets[0].manifest["tokenizer"]["sha256"]
    for path, ds in zip(config.datasets, datasets, strict=True):
        if ds.manifest["tokenizer"]["sha256"] != first or ds.dtype != datasets[0].dtype:
            raise ConfigError(f"mix: {path} was tokenized with another tokenizer or dtype than "
                              f"{config.datasets[0]}; a mixture needs one tokenizer")
    return datasets


def select(lengths: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(document positions, epochs): whole seeded passes over the documents until `target` tokens."""
    total = int(lengths.sum())
    passes = max(1, math.ceil(target / total))
    order = np.concatenate([rng.permutation(len(lengths)) for _ in range(passes)])
    cum = np.cumsum(lengths[order])
    k = min(len(order), int(np.searchsorted(cum, target, side="left")) + 1)
    return order[:k], np.arange(k) // len(lengths)


def stage_inputs(config: MixConfig) -> dict[str, str]:
    """The token datasets mixed."""
    return {f"datasets.{i}": path for i, path in enumerate(config.datasets)}


Available = dict[str, tuple[np.ndarray, int]]  # source -> (its rows in the document table, its tokens)


def run(config: MixConfig) -> Path:
    goal = targets(config)
    datasets = _open_datasets(config)
    docs = _documents(datasets)
    lengths_all = docs.column("length").to_numpy()
    available = _available(docs, lengths_all)
    _check_reachable(config, goal, available)

    rundir = RunDir.claim(config.run.dir, "mix", config, overwrite=config.run.overwrite,
                          inputs=stage_inputs(config))
    log = rundir.logger()
    root = rundir.path
    for name in (fmt.SEQUENCE_ARRAY, fmt.SEQUENCE_TABLE, fmt.MANIFEST, fmt.CROISSANT):
        (root / name).unlink(missing_ok=True)

    rows, epoch = _sequence_order(config, goal, available, lengths_all)
    picked = docs.take(pa.array(rows))
    lengths = _write_sequence(root, picked, epoch)
    manifest = _manifest(config, goal, available, datasets, root, picked, epoch, lengths)
    MixtureManifest.parse(manifest, f"{root / fmt.MANIFEST} (being written)")
    write_json(root / fmt.MANIFEST, manifest)
    write_croissant(root, manifest)
    log.info("mix: %d documents, %d tokens (target %d) from %s -> %s", len(rows), manifest["n_tokens"],
             config.target_tokens, ", ".join(goal), root)
    print_summary(root, manifest)
    return root


def _available(docs: pa.Table, lengths_all: np.ndarray) -> Available:
    names, code = _names(docs.column("source"))
    available = {}
    for k, name in enumerate(names):
        mask = code == k
        available[name] = (np.flatnonzero(mask), int(lengths_all[mask].sum()))
    return available


def _check_reachable(config: MixConfig, goal: dict[str, int], available: Available) -> None:
    """Refuse, before any run directory exists, a target a source cannot reach within its repetition cap."""
    problems = []
    for name, tokens in goal.items():
        if name not in available:
            problems.append(f"source {name!r} has no documents in the datasets "
                            f"(available: {', '.join(available) or 'none'})")
            continue
        cap = config.sources[name].max_repetitions or config.max_repetitions
        have = available[name][1]
        if tokens > cap * have:
            problems.append(
                f"source {name!r} needs {tokens / have:.2f} passes over its {have} tokens to reach "
                f"{tokens} tokens, above its repetition cap of {cap}"
            )
    if problems:
        raise ConfigError("mix: cannot build this mixture: " + "; ".join(problems)
                          + " (lower the ratio, raise max_repetitions or add data)")


def _sequence_order(config: MixConfig, goal: dict[str, int], available: Available,
                    lengths_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The picked document rows and their epochs, each source spread evenly along the sequence."""
    chosen, epochs, keys, ranks = [], [], [], []
    for rank, (name, tokens) in enumerate(goal.items()):
        rows, _ = available[name]
        rng = np.random.default_rng([config.run.seed, zlib.crc32(name.encode())])
        picks, epoch = select(lengths_all[rows], tokens, rng)
        lens = lengths_all[rows[picks]]
        before = np.cumsum(lens) - lens
        chosen.append(rows[picks])
        epochs.append(epoch)
        keys.append((before + lens / 2) / tokens)
        ranks.append(np.full(len(picks), rank))
    rows = np.concatenate(chosen)
    epoch = np.concatenate(epochs)
    order = np.lexsort((np.concatenate(ranks), np.concatenate(keys)))
    return rows[order], epoch[order]


def _write_sequence(root: Path, picked: pa.Table, epoch: np.ndarray) -> np.ndarray:
    """sequence.npy and sequence.parquet of the picked documents; their token lengths."""
    seq = np.zeros(picked.num_rows, dtype=fmt.SEQUENCE_DTYPE)
    seq["dataset"] = picked.column("dataset").to_numpy()
    seq["shard"] = picked.column("shard").to_numpy()
    seq["start"] = picked.column("start").to_numpy()
    seq["length"] = picked.column("length").to_numpy()
    seq["doc"] = picked.column("doc_index").to_numpy()
    seq["epoch"] = epoch
    seq["end"] = np.cumsum(seq["length"].astype(np.uint64))
    with open(root / fmt.SEQUENCE_ARRAY, "wb") as fh:
        np.save(fh, seq, allow_pickle=False)
    lengths = seq["length"].astype(np.int64)
    table = pa.table({
        "position": pa.array(np.arange(picked.num_rows), pa.int64()),
        "dataset": picked.column("dataset"),
        "doc_index": picked.column("doc_index"),
        "id": picked.column("id"),
        "source": picked.column("source"),
        "license": picked.column("license"),
        "epoch": pa.array(epoch, pa.int32()),
        "n_tokens": pa.array(lengths, pa.int64()),
        "mixture_start": pa.array(np.cumsum(lengths) - lengths, pa.int64()),
    })
    pq.write_table(table, root / fmt.SEQUENCE_TABLE, compression="zstd", row_group_size=fmt.PROVENANCE_ROW_GROUP)
    return lengths


def _source_summaries(config: MixConfig, goal: dict[str, int], available: Available, picked: pa.Table,
                      epoch: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    n_tokens = int(lengths.sum())
    source_names, picked_source = _names(picked.column("source"))
    license_names, picked_license = _names(picked.column("license"))
    sources: dict[str, Any] = {}
    for name, tokens in goal.items():
        mask = picked_source == (source_names.index(name) if name in source_names else -1)
        got = int(lengths[mask].sum())
        have_rows, have = available[name]
        codes, counts = np.unique(picked_license[mask], return_counts=True)
        licenses = [license_names[c] for c in codes]
        sources[name] = {
            "target_tokens": tokens,
            "target_ratio": tokens / config.target_tokens,
            "tokens": got,
            "docs": int(mask.sum()),
            "ratio": got / n_tokens,
            "available_tokens": have,
            "available_docs": len(have_rows),
            "repetitions": got / have,
            "max_epoch": int(epoch[mask].max()),
            "max_repetitions": config.sources[name].max_repetitions or config.max_repetitions,
            "licenses": {str(lic): int(c) for lic, c in zip(licenses, counts, strict=True)},
        }
    return sources


def _manifest(config: MixConfig, goal: dict[str, int], available: Available, datasets: list[TokenDataset],
              root: Path, picked: pa.Table, epoch: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    excluded = {name: {"tokens": have, "docs": len(r)} for name, (r, have) in available.items() if name not in goal}
    return {
        "schema": fmt.MIXTURE_SCHEMA,
        "kind": "mixture",
        "code_version": code_version(),
        "config": recorded_config(config),
        "dtype": datasets[0].dtype,
        "tokenizer": {k: datasets[0].manifest["tokenizer"][k] for k in ("sha256", "eos_id", "vocab_size")},
        "datasets": [
            {
                "path": Path(os.path.relpath(ds.root.resolve(), root.resolve())).as_posix(),
                "manifest_sha256": sha256_file(ds.root / fmt.MANIFEST),
                "n_tokens": ds.n_tokens,
                "n_docs": ds.n_docs,
            }
            for ds in datasets
        ],
        "target_tokens": config.target_tokens,
        "n_tokens": int(lengths.sum()),
        "n_docs": picked.num_rows,
        "sources": _source_summaries(config, goal, available, picked, epoch, lengths),
        "excluded_sources": excluded,
        "sequence": {"array": file_record(root / fmt.SEQUENCE_ARRAY, root),
                     "table": file_record(root / fmt.SEQUENCE_TABLE, root)},
        "curation": [ds.manifest.get("curation") for ds in datasets],
        "inputs": recorded_inputs(root),
    }


def print_summary(root: Path, manifest: dict[str, Any]) -> None:
    """What the stage wrote, on the console: a successful run would otherwise be silent."""
    print(f"atom mix: {root}")
    print(f"  tokens: {manifest['n_tokens']:,} (target {manifest['target_tokens']:,}) in {manifest['n_docs']:,} "
          f"documents from {len(manifest['datasets'])} dataset(s)")
    for name, s in manifest["sources"].items():
        print(f"  source {name}: {s['tokens']:,} tokens, ratio {s['ratio']:.3f} (target {s['target_ratio']:.3f}), "
              f"{s['docs']:,} documents, {s['repetitions']:.2f} passes over its data")
    if manifest["excluded_sources"]:
        print(f"  left out: {', '.join(manifest['excluded_sources'])}")
    print(f"  order: {root / fmt.SEQUENCE_ARRAY} and {root / fmt.SEQUENCE_TABLE}")


STAGE = Stage(
    name="mix",
    summary="build a deterministic data mixture over token datasets",
    config_cls=MixConfig,
    plan=plan,
    run=run,
    inputs=stage_inputs,
)
