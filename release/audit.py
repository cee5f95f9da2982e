"""`atom audit RELEASE_DIR`: verify a release offline, trusting none of its files.

1. files: SHA256SUMS lists every file (no more, no fewer) with its hash; release.json is a release.
2. model card: README.md equals the card regenerated from release.json.
3. per stage: the config's header digest matches its body; the training manifest pins the copied data
   manifest (sha256), the tokenizer and the stream's size; steps run 1..N with global_batch x seq_len
   tokens each, the checkpoint's tokens_seen agrees, and the epochs over the stream are as recorded;
   the data files are those the manifests pin; the provenance covers the stream; every document behind
   the trained windows (recomputed from the training manifest) has a license within the allow-list;
   a stage's parent is the previous stage's checkpoint.
4. weights: config.json is the trained architecture; transformers loads the weights (no missing or
   unexpected tensors) and the tokenizer offline, and generates.
   release.json's own numbers (totals, weights' origin, tokenizer ids, model sizes, per-stage budget and
   data) are recomputed and a difference names the field (table in docs/release.md).
   A stage's last losses and in-loop benchmark scores are recomputed from its copied metrics.jsonl
   (instances and chance from the eval data); the contamination summary's source dates from the copied
   data manifests, its publication dates from the eval catalog.
5. with --data DIR: DIR is the data a stage trained on (manifest sha256), passes the dataset/mixture
   audit (every shard re-hashed), and its tokens under the trained windows hash to the recorded digest;
   when every stage's data is given, the contamination check is rerun and must give the recorded counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.audit import ABSENT, AuditReport, agree
from core.config import ConfigError
from core.manifest import sha256_file, verify_file_record
from core.manifest_model import ManifestError
from core.rundir import recorded_config_digest, tree_digest
from data_pipeline.audit import audit_data, audit_provenance, read_provenance
from data_pipeline.tokens import format as fmt
from pretrain.metrics import read_jsonl
from release import data as rdata
from release.build import CHECKPOINTS_JSON, METRICS, SUMS, TOKENIZER_FILES
from release.card import render_card
from release.lineage import (
    CONFIG,
    MIDTRAIN,
    TRAIN_MANIFEST,
    batches_per_epoch,
    read_train_manifest,
    resolved_model,
    touched_documents,
    trained_tokens_digest,
    trained_windows,
)
from release.manifest import RELEASE_JSON, SCHEMA, ContaminationSummary, ParentLink, Release, Stage, read_release
from release.scores import in_loop_benchmarks, last_losses

PROMPT = "def "
NEW_TOKENS = 8


def audit(path: str | Path, allow_licenses: list[str] | None = None, data: list[str] | None = None) -> AuditReport:
    """Audit what lies at `path`: a release (release.json), else a curation run, dataset or mixture."""
    if (Path(path) / RELEASE_JSON).is_file():
        return audit_release(path, allow_licenses, data)
    if data:
        raise ConfigError(f"{path}: --data applies to a release directory only")
    return audit_data(path, allow_licenses)


def audit_release(path: str | Path, allow_licenses: list[str] | None = None, data: list[str] | None = None,
                  load_weights: bool = True) -> AuditReport:
    root = Path(path)
    if not root.is_dir() or not (root / RELEASE_JSON).is_file():
        raise ConfigError(f"{root}: not an atom release (no {RELEASE_JSON})")
    report = AuditReport(str(root), "release")
    _files(root, report)
    try:
        release = read_release(root)
    except ManifestError as exc:
        report.add(RELEASE_JSON, f"schema {SCHEMA}", False, str(exc))
        return report
    report.add(RELEASE_JSON, f"schema {SCHEMA}", True)
    report.summary.update({"stages": len(release.stages), "tokens": release.tokens_total,
                           "SHA256SUMS sha256": sha256_file(root / SUMS)[:16] if (root / SUMS).is_file() else "-"})
    try:
        card = render_card(release)
    except (KeyError, TypeError, AttributeError) as exc:  # model.config is free-form here; validated in _weights
        report.add(RELEASE_JSON, "model.config readable", False, f"malformed: {exc!r}")
        return report
    report.add("README.md", "model card generated from release.json",
               (root / "README.md").is_file() and (root / "README.md").read_text(encoding="utf-8") == card,
               "differs from the card release.json generates")
    allow = sorted(set(allow_licenses)) if allow_licenses is not None else None
    _numbers(root, release, report)
    for i, stage in enumerate(release.stages):
        try:
            _stage(root, release, i, report, allow)
        except (KeyError, TypeError, ValueError, OSError) as exc:  # the stage's own files, read as they are
            report.add(stage.dir, "readable stage records", False, f"{type(exc).__name__}: {exc}")
    _weights(root, release, report, load_weights)
    for given in data or []:
        _given_data(Path(given), root, release, report, allow)
    if release.contamination is not None:
        _contamination(root, release, release.contamination, data or [], report)
    return report


def _contamination(root: Path, release: Release, stated: ContaminationSummary, data: list[str],
                   report: AuditReport) -> None:
    """The summary's dates from the copied manifests and the catalog; its counts by rerunning the check."""
    from release.contamination import contamination, newest_source, release_summary, trained_sources

    try:
        sources = trained_sources(root, release)
    except (ConfigError, OSError, ValueError) as exc:
        report.add(RELEASE_JSON, "contamination: sources readable", False, str(exc))
        return
    agree(report, RELEASE_JSON, "contamination.sources", {k: v.to_json_dict() for k, v in stated.sources.items()},
          sources, "the curation records of the copied data manifests")
    agree(report, RELEASE_JSON, "contamination.newest_source", stated.newest_source, newest_source(sources),
          "contamination.sources")
    given = {sha256_file(Path(d) / fmt.MANIFEST) for d in data if (Path(d) / fmt.MANIFEST).is_file()}
    if not {s.data.manifest_sha256 for s in release.stages} <= given:
        from evaluation.catalog import EVAL_SETS
        from release.contamination import set_dates

        known = [n for n in stated.eval_sets if n in EVAL_SETS]
        got = {**set_dates(known, sources), **{n: ABSENT for n in stated.eval_sets if n not in EVAL_SETS}}
        agree(report, RELEASE_JSON, "contamination.eval_sets publication dates",
              {n: {"published": e.published, "predates_data": e.predates_data} for n, e in stated.eval_sets.items()},
              got, "the eval catalog and the newest source")
        return  # the counts need every stage's documents: --data for each
    recomputed = release_summary(contamination(root, data, list(stated.eval_sets)), sources)
    agree(report, RELEASE_JSON, "contamination", stated.to_json_dict(), recomputed,
          "the check rerun on the trained documents (--data)")


# ---- 1. files -------------------------------------------------------------------------------------


def _files(root: Path, report: AuditReport) -> None:
    sums = root / SUMS
    if not report.add(SUMS, "present", sums.is_file(), "missing"):
        return
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        well_formed = bool(sep and len(digest) == 64 and name)
        if not report.add(SUMS, "well-formed line", well_formed, f"line {n}: {line[:80]!r}"):
            continue
        listed[name] = digest
    names = list(listed)
    report.add(SUMS, "sorted by path", names == sorted(names), "entries are not sorted")
    for name, digest in listed.items():
        file = root / name
        if not report.add(name, "present", file.is_file() and not file.is_symlink(), "listed in SHA256SUMS, missing"):
            continue
        report.add(name, "sha256 matches SHA256SUMS", sha256_file(file) == digest, "file differs from its checksum")
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        if rel == SUMS or file.is_dir() and not file.is_symlink():
            continue
        if file.is_symlink() or not file.is_file():
            report.add(rel, "a plain file", False, "links and special files are not allowed in a release")
        elif rel not in listed:
            report.add(rel, "listed in SHA256SUMS", False, "file not in SHA256SUMS")


# ---- 3. stages ------------------------------------------------------------------------------------


def _stage(root: Path, release: Release, stage_index: int, report: AuditReport, allow: list[str] | None) -> None:
    """Stage `stage_index` of the lineage: its config, training manifest, data, budget, documents, parent."""
    stage = release.stages[stage_index]
    base = root / stage.dir
    config = _stage_config(base, stage, report)
    header, records = _stage_train_manifest(base, stage, stage_index, config, report)
    data_dir = root / stage.data.dir
    manifest = _stage_data_manifest(data_dir, release, stage, header["stream"], report)
    windows = _stage_budget(base, stage, header, records, manifest, report)
    dataset_roots = _data_files(data_dir, manifest, stage, report)
    if dataset_roots is not None:
        _stage_documents(data_dir, stage, header["stream"], manifest, dataset_roots, windows, report, allow)
    if stage.parent is not None:
        _stage_parent(root, release, stage, stage.parent, report)
    records = read_jsonl(base / METRICS) if (base / METRICS).is_file() else []
    agree(report, RELEASE_JSON, f"stages[{stage_index}].final_metrics", stage.final_metrics, last_losses(records),
          f"{stage.dir}/metrics.jsonl")
    if "benchmarks" in stage.model_fields_set:  # releases made before in-loop benchmarks do not state them
        stated = stage.benchmarks.to_json_dict() if stage.benchmarks is not None else None
        agree(report, RELEASE_JSON, f"stages[{stage_index}].benchmarks", stated,
              in_loop_benchmarks(config, records, stage.step), f"{stage.dir}/metrics.jsonl and the eval data")


def _stage_config(base: Path, stage: Stage, report: AuditReport) -> dict[str, Any]:
    """config.yaml hashes to its own header and to release.json's config_sha256."""
    text = (base / CONFIG).read_text(encoding="utf-8")
    config = yaml.safe_load(text) or {}
    digest = tree_digest(config)
    report.add(f"{stage.dir}/{CONFIG}", "config-sha256 header matches the config",
               recorded_config_digest(text) == digest == stage.config_sha256,
               "the resolved config does not hash to its recorded config-sha256")
    return config


def _stage_train_manifest(base: Path, stage: Stage, stage_index: int, config: dict[str, Any],
                          report: AuditReport) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The training manifest's header agrees with release.json and the config; its steps up to the release's."""
    tm_name = f"{stage.dir}/{TRAIN_MANIFEST}"
    header, all_records = read_train_manifest(base / TRAIN_MANIFEST)
    records = [r for r in all_records if r["step"] <= stage.step]
    seq_len, batch = int(header["seq_len"]), int(header["global_batch"])
    where = f"stages[{stage_index}]"
    agree(report, RELEASE_JSON, f"{where}.index", stage.index, stage_index, "its position in stages")
    for key in ("seq_len", "global_batch", "seed"):
        agree(report, RELEASE_JSON, f"{where}.{key}", getattr(stage, key), header.get(key), tm_name)
    report.add(tm_name, "agrees with the config", seq_len == config["data"]["seq_len"]
               and batch == config["data"]["global_batch"] and header["seed"] == config["run"]["seed"]
               and stage.step <= config["trainer"]["max_steps"],
               "seq_len, global_batch, seed or steps differ from config.yaml")
    return header, records


def _stage_data_manifest(data_dir: Path, release: Release, stage: Stage, stream: dict[str, Any],
                         report: AuditReport) -> dict[str, Any]:
    """The copied data manifest is the one the training manifest pins, and release.json describes it."""
    tm_name = f"{stage.dir}/{TRAIN_MANIFEST}"
    dm_name = f"{stage.data.dir}/{fmt.MANIFEST}"
    manifest = json.loads((data_dir / fmt.MANIFEST).read_text(encoding="utf-8"))
    manifest_sha = sha256_file(data_dir / fmt.MANIFEST)
    report.add(dm_name, "pinned by the training manifest",
               manifest_sha == stream["manifest_sha256"] == stage.data.manifest_sha256,
               f"sha256 differs from stream.manifest_sha256 in {tm_name}")
    dm_info = {"schema": manifest.get("schema"), "n_tokens": manifest.get("n_tokens"), "n_docs": manifest.get("n_docs"),
               "manifest_sha256": manifest_sha, "dir": stage.data.dir,
               "sources": {k: {"tokens": v.get("tokens"), "docs": v.get("docs"), "licenses": v.get("licenses")}
                           for k, v in sorted(manifest.get("sources", {}).items())},
               "datasets": [rdata.dataset_dir(i) for i in range(len(manifest.get("datasets", [])))],
               "allow_licenses": _allow_list(data_dir, manifest), "path_at_training": stream.get("path")}
    stated = stage.data.to_json_dict()
    for key, value in dm_info.items():
        agree(report, RELEASE_JSON, f"stages[{stage.index}].data.{key}", stated.get(key), value, dm_name)
    _croissant(data_dir, manifest, stage.data.dir + "/", report)
    report.add(tm_name, "stream size is the data manifest's", stream["n_tokens"] == manifest.get("n_tokens"),
               f"stream n_tokens {stream['n_tokens']}, data manifest {manifest.get('n_tokens')}")
    report.add(tm_name, "tokenizer is the release's", stream["tokenizer_sha256"] == manifest["tokenizer"]["sha256"]
               == release.tokenizer.sha256, "tokenizer sha256 differs between training manifest, data "
               "manifest and release")
    return manifest


def _stage_budget(base: Path, stage: Stage, header: dict[str, Any], records: list[dict[str, Any]],
                  manifest: dict[str, Any], report: AuditReport) -> np.ndarray:
    """Steps x global_batch x seq_len tokens, as the checkpoint and release.json say; the trained windows."""
    tm_name = f"{stage.dir}/{TRAIN_MANIFEST}"
    seq_len, batch = int(header["seq_len"]), int(header["global_batch"])
    step = stage.step
    report.add(tm_name, "one record per step", [r["step"] for r in records] == list(range(1, step + 1)),
               f"records do not run 1..{step}")
    per_step = batch * seq_len
    trained = sum(int(r["tokens"]) for r in records)
    report.add(tm_name, "tokens = steps x global_batch x seq_len",
               all(int(r["tokens"]) == per_step for r in records) and trained == step * per_step == stage.tokens,
               f"{trained} tokens recorded, {step} x {batch} x {seq_len} = {step * per_step}, "
               f"release.json {stage.tokens}")
    ckpts = json.loads((base / CHECKPOINTS_JSON).read_text())
    used = next((c for c in ckpts if c["step"] == step), None)
    report.add(f"{stage.dir}/{CHECKPOINTS_JSON}", "checkpoint tokens_seen",
               used is not None and used == stage.checkpoint.to_json_dict() and used["tokens_seen"] == trained,
               f"step {step}: checkpoint entry missing or tokens_seen != {trained}")
    batches = [int(r["batch"]) for r in records]
    per_epoch = batches_per_epoch(header)
    epochs = batches[-1] // per_epoch + 1 if batches else 0
    increasing = all(a < b for a, b in zip(batches, batches[1:], strict=False)) and (not batches or batches[0] >= 0)
    report.add(tm_name, "batches in order",
               increasing and per_epoch == header["batches_per_epoch"] == stage.batches_per_epoch,
               "batch indices not increasing, or batches_per_epoch differs from the stream's size")
    windows = trained_windows(header, records)
    available = per_epoch * batch
    report.add(tm_name, "within what the data offers", epochs == stage.epochs and windows.size <= epochs * available
               and windows.size == stage.windows,
               f"{windows.size} windows over {epochs} epoch(s) of {available} (release.json: {stage.epochs})")
    _repetition(manifest, trained, available * seq_len, report, f"{stage.data.dir}/{fmt.MANIFEST}")
    return windows


def _stage_documents(data_dir: Path, stage: Stage, stream: dict[str, Any], manifest: dict[str, Any],
                     dataset_roots: list[Path], windows: np.ndarray, report: AuditReport,
                     allow: list[str] | None) -> None:
    """The provenance covers the stream; every document behind the trained windows has an allowed license."""
    docs = rdata.StreamDocuments.read(data_dir, manifest, dataset_roots)
    mask = touched_documents(docs.ends, windows, stage.seq_len)
    where = (f"{stage.data.dir}/{manifest['provenance']['path']}" if manifest["schema"] == fmt.DATASET_SCHEMA
             else f"{stage.data.dir}/{manifest['sequence']['array']['path']}")
    report.add(where, "documents cover the stream", len(docs.ends) > 0 and int(docs.ends[-1]) == stream["n_tokens"],
               f"documents end at {int(docs.ends[-1]) if len(docs.ends) else 0}, stream has {stream['n_tokens']}")
    lic = docs.licenses[mask]
    empty = np.array([not (isinstance(v, str) and v.strip()) for v in lic], dtype=bool)
    report.add(where, "every trained document has a license", not empty.any(),
               f"{int(empty.sum())} trained document(s) without a license, e.g. {docs.ids[mask][empty][:3].tolist()}")
    policy = allow if allow is not None else stage.data.allow_licenses
    if policy is not None:
        outside = sorted({v for v in lic[~empty].tolist() if v not in policy})
        report.add(where, "trained documents' licenses within allow-list", not outside,
                   f"{', '.join(outside)} not in allow-list {policy}")
    report.add(RELEASE_JSON, f"trained documents of stage {stage.index}",
               docs.summary(mask) == stage.trained_documents.to_json_dict(),
               "per-source/license counts differ from the recomputed ones")
    _held_out(stream, docs, windows, stage.seq_len, report, f"{stage.dir}/{TRAIN_MANIFEST}")


def _stage_parent(root: Path, release: Release, stage: Stage, parent: ParentLink, report: AuditReport) -> None:
    """A stage's parent is the previous stage's checkpoint, as its midtrain.json and checkpoints.json say."""
    prev = release.stages[parent.stage]
    meta = _midtrain_meta(root, stage)
    if meta is not None:
        report.add(f"{stage.dir}/{MIDTRAIN}", "parent is the previous stage", meta["parent"].get("step") ==
                   parent.step and meta["parent"].get("content_sha256") == parent.content_sha256
                   and meta["parent"].get("model") == stage_model(root, prev),
                   f"names a parent other than {prev.dir} at step {parent.step}")
    prev_ckpts = json.loads((root / prev.dir / CHECKPOINTS_JSON).read_text())
    match = [c for c in prev_ckpts if c["step"] == parent.step and c["content_sha256"] == parent.content_sha256]
    report.add(f"{stage.dir}/{CONFIG}", "parent is the previous stage's checkpoint",
               bool(match) and prev.step == parent.step,
               f"parent step {parent.step} is not a checkpoint of {prev.dir}")


def _held_out(stream, docs, windows, seq_len, report, name) -> None:
    """Validation documents were never trained on: every occurrence of each held-out document (a mixture
    repeats them) lies in windows the training manifest excludes, and no trained window reads one."""
    held = stream.get("held_out_documents")
    if not held:
        return
    from pretrain.data import window_count
    from pretrain.held_out import touched_windows

    starts, held_starts = docs.starts, np.array([s for s, _ in held], dtype=np.int64)
    firsts = np.searchsorted(starts, held_starts)
    found = (firsts < len(starts)) & (starts[np.minimum(firsts, len(starts) - 1)] == held_starts)
    if not report.add(name, "held-out documents are documents of the stream", bool(found.all()),
                      f"{int((~found).sum())} held_out_documents ranges start at no document"):
        return
    every = np.isin(docs.keys, docs.keys[firsts])
    n_windows = window_count(int(stream["n_tokens"]), seq_len)
    touched = touched_windows(starts[every], docs.ends[every], seq_len, n_windows)
    excluded = set(stream.get("held_out") or [])
    leaked = sorted(set(touched.tolist()) & set(np.unique(windows).tolist()))
    report.add(name, "held-out documents never trained on", set(touched.tolist()) <= excluded and not leaked,
               f"{int(every.sum())} occurrence(s) of {len(held)} held-out documents: windows "
               f"{sorted(set(touched.tolist()) - excluded)[:5]} not excluded, {leaked[:5]} trained")


def _repetition(manifest: dict[str, Any], trained: int, available_tokens: int, report: AuditReport,
                name: str) -> None:
    """A mixture caps each source's repetitions; training over it more than once multiplies them."""
    if manifest.get("schema") != fmt.MIXTURE_SCHEMA or not available_tokens:
        return
    passes = max(1.0, trained / available_tokens)
    over = [f"{k}: {v['repetitions']:.2f} x {passes:.2f} > {v['max_repetitions']}"
            for k, v in manifest.get("sources", {}).items()
            if v.get("max_repetitions") is not None and v["repetitions"] * passes > v["max_repetitions"] + 1e-9]
    report.add(name, "source repetitions within their caps after training passes", not over, "; ".join(over))


def _data_files(data_dir: Path, manifest: dict[str, Any], stage: Stage, report: AuditReport) -> list[Path] | None:
    """Check the copied files against the manifests that pin them; the dataset roots, or None if files are
    missing. A file that is present but not the pinned one is still read, so its own problems are named too."""
    prefix = stage.data.dir + "/"
    mname = prefix + fmt.MANIFEST

    def pinned(record: dict[str, Any], where: Path, pre: str) -> bool:
        problem = verify_file_record(record, where)
        report.add(pre + record["path"], "pinned by its manifest", problem is None, problem or "")
        return (where / record["path"]).is_file()

    def dataset(ds_dir: Path, ds_manifest: dict[str, Any], pre: str) -> bool:
        ok = pinned(ds_manifest["provenance"], ds_dir, pre)
        if ok:
            audit_provenance(read_provenance(ds_dir / ds_manifest["provenance"]["path"]), ds_manifest, [], report,
                              pre + ds_manifest["provenance"]["path"], pre + fmt.MANIFEST, None, summarize=False)
        return ok

    if manifest.get("schema") == fmt.DATASET_SCHEMA:
        return [] if dataset(data_dir, manifest, prefix) else None
    ok = pinned(manifest["sequence"]["array"], data_dir, prefix) & pinned(manifest["sequence"]["table"], data_dir,
                                                                           prefix)
    roots = []
    for i, entry in enumerate(manifest["datasets"]):
        ds_dir = data_dir / rdata.dataset_dir(i)
        pre = f"{prefix}{rdata.dataset_dir(i)}/"
        file = ds_dir / fmt.MANIFEST
        if not report.add(pre + fmt.MANIFEST, "pinned by the mixture", file.is_file()
                          and sha256_file(file) == entry["manifest_sha256"],
                          f"missing or sha256 differs from datasets[{i}] of {mname}"):
            ok = False
            continue
        ok &= dataset(ds_dir, json.loads(file.read_text(encoding="utf-8")), pre)
        roots.append(ds_dir)
    return roots if ok else None


def _allow_list(data_dir: Path, manifest: dict[str, Any]) -> list[str] | None:
    """The allow-list the data was built under, from the copies in the release (a mixture's datasets are in
    datasets/NN there, not at the paths its manifest names)."""
    if manifest.get("schema") != fmt.MIXTURE_SCHEMA:
        return rdata.allow_list(data_dir, manifest)
    lists = []
    for i in range(len(manifest.get("datasets", []))):
        file = data_dir / rdata.dataset_dir(i) / fmt.MANIFEST
        lists.append(rdata.allow_list(file.parent, json.loads(file.read_text(encoding="utf-8")))
                     if file.is_file() else None)
    return None if not lists or any(v is None for v in lists) else sorted({lic for v in lists for lic in v or []})


def _croissant(data_dir: Path, manifest: dict[str, Any], prefix: str, report: AuditReport) -> None:
    """A copied croissant.json is still the one its manifest generates, byte for byte (see data_pipeline.audit)."""
    from data_pipeline.croissant import croissant_text

    dirs = [data_dir] + [data_dir / rdata.dataset_dir(i) for i in range(len(manifest.get("datasets", [])))]
    for d in dirs:
        if not (d / fmt.CROISSANT).is_file() or not (d / fmt.MANIFEST).is_file():
            continue
        name = prefix + (d.relative_to(data_dir) / fmt.CROISSANT).as_posix()
        try:
            expected = croissant_text(d, json.loads((d / fmt.MANIFEST).read_text(encoding="utf-8")))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            report.add(name, "regenerated from manifest.json byte for byte", False, f"malformed manifest: {exc!r}")
            continue
        report.add(name, "regenerated from manifest.json byte for byte",
                   (d / fmt.CROISSANT).read_bytes() == expected.encode(),
                   "differs from the Croissant its manifest.json generates")


def _numbers(root: Path, release: Release, report: AuditReport) -> None:
    """release.json's totals, the weights' origin and the tokenizer's ids, recomputed from the stages and
    from tokenizer.json itself (the model's sizes are recomputed in `_weights`)."""
    from data_pipeline.tokens.encoding import open_tokenizer

    stages = release.stages
    agree(report, RELEASE_JSON, "tokens_total", release.tokens_total, sum(s.tokens for s in stages),
          "the sum over stages[].tokens")
    agree(report, RELEASE_JSON, "steps_total", release.steps_total, sum(s.step for s in stages),
          "the sum over stages[].step")
    last = {"file": "model.safetensors", "stage": len(stages) - 1, "step": stages[-1].step,
            "content_sha256": stages[-1].checkpoint.content_sha256} if stages else ABSENT
    agree(report, RELEASE_JSON, "weights", release.weights.to_json_dict(), last, "the last stage and its checkpoint")
    agree(report, RELEASE_JSON, "has_plot", release.has_plot, (root / "metrics.png").is_file(), "metrics.png")
    if not all((root / name).is_file() for name in TOKENIZER_FILES):
        return  # named as missing by the SHA256SUMS check
    try:
        _, info, _ = open_tokenizer(root, "auto")
    except Exception as exc:  # noqa: BLE001 - a tokenizer that does not load fails this check
        report.add("tokenizer.json", "loads", False, f"{type(exc).__name__}: {exc}"[:300])
        return
    tokenizer = {"sha256": sha256_file(root / "tokenizer.json"), "eos_id": info["eos_id"], "pad_id": info["pad_id"],
                 "vocab_size": info["vocab_size"], "files": list(TOKENIZER_FILES)}
    agree(report, RELEASE_JSON, "tokenizer", release.tokenizer.to_json_dict(), tokenizer, "tokenizer.json")
    ids = {"eos_token_id": info["eos_id"], "pad_token_id": info["pad_id"], "bos_token_id": None}
    for name in ("config.json", "generation_config.json"):
        try:
            stated = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # named by the SHA256SUMS and weights checks
        agree(report, name, "token ids", {k: stated.get(k, ABSENT) for k in ids}, ids, "tokenizer.json")
        if name == "generation_config.json":
            agree(report, RELEASE_JSON, "generation", release.generation,
                  {k: v for k, v in stated.items() if k not in ids}, name)


# ---- 4. weights -----------------------------------------------------------------------------------


def _midtrain_meta(root: Path, stage: Stage) -> dict[str, Any] | None:
    file = root / stage.dir / MIDTRAIN
    return json.loads(file.read_text()) if file.is_file() else None


def stage_model(root: Path, stage: Stage) -> dict[str, Any]:
    """The full model config of a stage, from its config.yaml (and midtrain.json)."""
    config = yaml.safe_load((root / stage.dir / CONFIG).read_text()) or {}
    return resolved_model(config, _midtrain_meta(root, stage))


def _weights(root: Path, release: Release, report: AuditReport, load: bool) -> None:
    try:
        config = json.loads((root / "config.json").read_text())
        trained_model = stage_model(root, release.stages[-1])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        report.add("config.json", "readable", False, str(exc))
        return
    ours = {**trained_model, "fp8": None}
    report.add("config.json", "is the trained architecture", config.get("atom_config") == ours
               == release.model.config, "atom_config differs from the released stage's config.yaml model")
    from pretrain.model.config import MoEModelConfig

    try:
        cfg = MoEModelConfig.model_validate(ours)
        sizes = {"architecture": (config.get("architectures") or [None])[0], "params_total": cfg.num_params(),
                 "params_active": cfg.num_params(active=True),
                 "flops_per_token": cfg.flops_per_token(release.stages[-1].seq_len)}
    except (ValueError, TypeError, KeyError) as exc:
        report.add(f"{release.stages[-1].dir}/{CONFIG}", "model config validates", False, str(exc)[:300])
    else:
        for key, value in sizes.items():
            agree(report, RELEASE_JSON, f"model.{key}", getattr(release.model, key), value,
                  "config.json" if key == "architecture" else f"the model config of {release.stages[-1].dir}")
    if (root / "tokenizer.json").is_file():
        report.add("tokenizer.json", "is the tokenizer the model trained with",
                   sha256_file(root / "tokenizer.json") == release.tokenizer.sha256,
                   "sha256 differs from release.json / the training manifest")
    if not load:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(root, local_files_only=True, dtype=torch.float32,
                                                           output_loading_info=True)
        model, info = loaded
    except Exception as exc:  # noqa: BLE001 - a release whose weights do not load fails this check
        report.add("model.safetensors", "loads with transformers", False, f"{type(exc).__name__}: {exc}"[:300])
        return
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    n_params = sum(p.numel() for p in model.parameters())
    want = release.model.params_total
    report.add("model.safetensors", "loads with transformers", not problems and n_params == want,
               f"{problems or ''} {n_params} parameters, release.json says {want}")
    try:
        tok = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        report.add("tokenizer.json", "loads with transformers", False, f"{type(exc).__name__}: {exc}"[:300])
        return
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    report.add("model.safetensors", "generates", out.shape[1] == ids.shape[1] + NEW_TOKENS
               and bool(torch.isfinite(model(ids).logits).all()), "generation failed or logits not finite")


# ---- 5. the dataset itself --------------------------------------------------------------------------


def _given_data(path: Path, root: Path, release: Release, report: AuditReport, allow: list[str] | None) -> None:
    name = f"--data {path}"
    file = path / fmt.MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--data {path}: no {fmt.MANIFEST} there")
    sha = sha256_file(file)
    stages = [s for s in release.stages if s.data.manifest_sha256 == sha]
    if not report.add(name, "is data a stage trained on", bool(stages),
                      f"manifest sha256 {sha[:16]}... matches no stage's training manifest"):
        return
    data_report = audit_data(file.parent, allow)
    for check in data_report.checks:
        report.add(f"{path}/{check.file}", check.check, check.ok, check.detail)
    from data_pipeline.tokens.reader import open_tokens
    from pretrain.data import TokenWindows

    for stage in stages:
        header, all_records = read_train_manifest(root / stage.dir / TRAIN_MANIFEST)
        windows = trained_windows(header, [r for r in all_records if r["step"] <= stage.step])
        got = trained_tokens_digest(TokenWindows(open_tokens(file.parent).spans(), stage.seq_len), windows)
        report.add(name, f"trained tokens of stage {stage.index} hash to the recorded digest",
                   got == stage.trained_tokens_sha256, f"sha256 {got[:16]}..., release.json "
                   f"{stage.trained_tokens_sha256[:16]}...")
