"""`atom release RUN_DIR --out DIR`: a self-contained, byte-reproducible release of a trained model.

    DIR/
      README.md                  model card (generated from release.json alone)
      release.json               what the release is: model, weights' origin, lineage, data, versions
      config.json, model.safetensors, generation_config.json      Hugging Face Qwen3-MoE (Dots1: sigmoid router) format
      tokenizer.json, tokenizer_config.json, special_tokens_map.json
      metrics.png                the released stage's loss/throughput plot
      lineage/NN-KIND/           one directory per stage, oldest first (pretrain, midtrain, ...):
        config.yaml, train_tokens.jsonl, checkpoints.json, metrics.jsonl, metrics.png, summary.json,
        evals.json, midtrain.json (those the run has), data/ (manifests + provenance, see data.py)
      SHA256SUMS                 sha256 of every other file, sorted by path (`sha256sum -c SHA256SUMS`)

Nothing written holds a timestamp, an absolute path of the builder's machine outside the copied
configs and manifests, or an unordered key, so two builds of one run are byte-identical. The release is
built in a sibling `.partial` directory and renamed into place: an error leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from core.config import ConfigError
from core.manifest import git_checkout, sha256_file
from core.rundir import recorded_config_digest, write_json
from data_pipeline.tokens import format as fmt
from pretrain.checkpoint import COMPLETE, checkpoint_digest, list_checkpoints, verify
from pretrain.metrics import plot_metrics, read_jsonl, reproducible
from release import data as rdata
from release.card import render_card
from release.lineage import (
    CONFIG,
    MIDTRAIN,
    TRAIN_MANIFEST,
    StageRecord,
    batches_per_epoch,
    lineage,
    touched_documents,
    trained_tokens_digest,
    trained_windows,
    trainer_state,
)
from release.manifest import RELEASE_JSON, SCHEMA, Release, read_release
from release.scores import in_loop_benchmarks, last_losses

SUMS = "SHA256SUMS"
CHECKPOINTS_JSON = "checkpoints.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
STAGE_FILES = (CONFIG, TRAIN_MANIFEST, "summary.json", "evals.json", MIDTRAIN)
METRICS = "metrics.jsonl"
PACKAGES = ("atom", "torch", "transformers", "safetensors", "tokenizers", "huggingface-hub", "numpy", "pyarrow",
            "pydantic", "pyyaml", "datatrove")
GENERATION = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1,
              "max_new_tokens": 128}


def is_release(path: Path) -> bool:
    try:
        return json.loads((path / RELEASE_JSON).read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def checkpoint_list(stage: StageRecord) -> list[dict[str, Any]]:
    """Every checkpoint the run still holds: step, tokens seen, path, content digest (`checkpoint_digest`)."""
    out = []
    for ckpt in sorted(list_checkpoints(stage.run_dir / "checkpoints"), key=lambda c: c.step):
        marker = ckpt.path / COMPLETE
        state = trainer_state(ckpt) if (ckpt.path / "trainer_state.json").is_file() else {}
        out.append({"step": ckpt.step, "tokens_seen": state.get("tokens_seen"),
                    "path": ckpt.path.relative_to(stage.run_dir).as_posix(),
                    "content_sha256": checkpoint_digest(ckpt.path) if marker.is_file() else None,
                    "complete": verify(ckpt, hashes=False) is None})
    return out


def stage_record(stage: StageRecord, index: int, stage_dir: str, out: Path) -> dict[str, Any]:
    """Copy one stage's records into `out/stage_dir` and describe it."""
    dst = out / stage_dir
    dst.mkdir(parents=True)
    present = []
    for name in STAGE_FILES:
        if (stage.run_dir / name).is_file():
            shutil.copyfile(stage.run_dir / name, dst / name)
            present.append(name)
    if (stage.run_dir / METRICS).is_file():  # without timings, which differ between identical runs
        lines = (stage.run_dir / METRICS).read_text().splitlines()
        records = [reproducible(json.loads(line)) for line in lines if line]
        (dst / METRICS).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        plot_metrics(dst / METRICS, dst / "metrics.png")
        present += [METRICS, "metrics.png"]
    checkpoints = checkpoint_list(stage)
    write_json(dst / CHECKPOINTS_JSON, checkpoints)

    stream = stage.header["stream"]
    src = Path(stream["path"])
    data_info = rdata.copy_data(src, stream["manifest_sha256"], dst / "data")
    manifest = json.loads((src / fmt.MANIFEST).read_text(encoding="utf-8"))
    windows = trained_windows(stage.header, stage.records)
    from data_pipeline.tokens.reader import open_tokens
    from pretrain.data import TokenWindows

    digest = trained_tokens_digest(TokenWindows(open_tokens(src).spans(), stage.seq_len), windows)
    docs = rdata.StreamDocuments.read(src, manifest)
    per_epoch = batches_per_epoch(stage.header)
    last_batch = int(stage.records[-1]["batch"]) if stage.records else -1
    used = next(c for c in checkpoints if c["step"] == stage.step)
    evals = json.loads((stage.run_dir / "evals.json").read_text()) if "evals.json" in present else None
    metrics = read_jsonl(dst / METRICS) if METRICS in present else []
    return {
        "index": index, "kind": stage.kind, "run_name": stage.run_dir.name, "dir": stage_dir,
        "files": present + [CHECKPOINTS_JSON],
        "config_sha256": recorded_config_digest(stage.config_text),
        "step": stage.step, "checkpoint": used,
        "parent": None if stage.parent is None else {"stage": index - 1, "step": stage.parent.step,
                                                     "content_sha256": checkpoint_digest(stage.parent.path)},
        "seq_len": stage.seq_len, "global_batch": stage.global_batch, "seed": int(stage.header["seed"]),
        "tokens": int(sum(r["tokens"] for r in stage.records)),
        "windows": int(windows.size), "batches_per_epoch": per_epoch,
        "epochs": (last_batch // per_epoch + 1) if stage.records else 0,
        "trained_tokens_sha256": digest,
        "data": {**data_info, "dir": f"{stage_dir}/data", "path_at_training": stream["path"],
                 "allow_licenses": rdata.allow_list(src, manifest),
                 "sources": {k: {"tokens": v.get("tokens"), "docs": v.get("docs"), "licenses": v.get("licenses")}
                             for k, v in sorted(manifest.get("sources", {}).items())}},
        "trained_documents": docs.summary(touched_documents(docs.ends, windows, stage.seq_len)),
        "final_metrics": last_losses(metrics),
        "evals": evals,
        "benchmarks": in_loop_benchmarks(stage.config, metrics, stage.step),
    }


def export_weights(stage: StageRecord, out: Path, tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The stage's checkpoint as Hugging Face safetensors + config.json + generation_config.json."""
    from pretrain.checkpoint_state import load_model_weights
    from pretrain.model.config import MoEModelConfig
    from pretrain.model.hf_export import export_hf
    from pretrain.model.transformer import Transformer

    cfg = MoEModelConfig.model_validate({**stage.model, "fp8": None})  # same weights, plain linears
    model = Transformer(cfg)
    load_model_weights(model, stage.checkpoint.path)
    export_hf(model.eval(), out)
    config = json.loads((out / "config.json").read_text())
    config.update(bos_token_id=None, eos_token_id=tokenizer["eos_id"], pad_token_id=tokenizer.get("pad_id"))
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json",
               {**GENERATION, "eos_token_id": tokenizer["eos_id"], "pad_token_id": tokenizer.get("pad_id"),
                "bos_token_id": None})
    return {"architecture": config["architectures"][0], "params_total": cfg.num_params(),
            "params_active": cfg.num_params(active=True), "flops_per_token": cfg.flops_per_token(stage.seq_len),
            "config": cfg.to_dict()}


def write_sums(root: Path) -> None:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    files = [f for f in files if f != SUMS]
    (root / SUMS).write_text("".join(f"{sha256_file(root / f)}  {f}\n" for f in files))


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_release(out):
        raise ConfigError(f"--out {out}: directory exists, is not empty and is not an atom release; "
                          "choose another directory")


def build_release(run_dir: str | Path, out: str | Path, step: int | None = None, name: str | None = None,
                  check_contamination: bool = True) -> Path:
    """Release the checkpoint at `step` (None: the newest) of `run_dir` and its lineage into `out`; with
    `check_contamination`, every trained document is checked against the benchmarks (release.contamination)."""
    out = Path(out).resolve()
    _prepare_out(out)
    stages = lineage(Path(run_dir), step)
    leaf = stages[-1]
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        records = [stage_record(s, i, f"lineage/{i:02d}-{s.kind}", tmp) for i, s in enumerate(stages)]
        src = Path(leaf.header["stream"]["path"])
        data_manifest = json.loads((src / fmt.MANIFEST).read_text(encoding="utf-8"))
        tokenizer = _copy_tokenizer(stages, rdata.tokenizer_dir(src, data_manifest), data_manifest, tmp)
        model = export_weights(leaf, tmp, tokenizer)
        leaf_plot = tmp / records[-1]["dir"] / "metrics.png"
        if leaf_plot.is_file():
            shutil.copyfile(leaf_plot, tmp / "metrics.png")
        release = {
            "schema": SCHEMA, "name": name or leaf.run_dir.name, "model": model,
            "weights": {"file": "model.safetensors", "stage": len(stages) - 1, "step": leaf.step,
                        "content_sha256": records[-1]["checkpoint"]["content_sha256"]},
            "tokenizer": tokenizer, "stages": records,
            "tokens_total": sum(r["tokens"] for r in records), "steps_total": sum(r["step"] for r in records),
            "code_version": git_checkout(), "packages": package_versions(),
            "generation": GENERATION, "has_plot": (tmp / "metrics.png").is_file(),
        }
        write_json(tmp / RELEASE_JSON, Release.parse(release, f"{RELEASE_JSON} being built").to_json_dict())
        if check_contamination:
            release["contamination"] = _contamination(tmp, stages)
            write_json(tmp / RELEASE_JSON, Release.parse(release, f"{RELEASE_JSON} being built").to_json_dict())
        card = render_card(read_release(tmp))  # rendered from what a reader of the file gets
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_sums(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _contamination(release_dir: Path, stages: list[StageRecord]) -> dict[str, Any]:
    """The benchmarks against the documents the stages trained on, read from the data they trained on."""
    from release.contamination import contamination, release_summary, trained_sources

    report = contamination(release_dir, [s.header["stream"]["path"] for s in stages])
    return release_summary(report, trained_sources(release_dir, read_release(release_dir)))


def _copy_tokenizer(stages: list[StageRecord], src: Path, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    want = {s.header["stream"]["tokenizer_sha256"] for s in stages}
    if len(want) != 1:
        raise ConfigError(f"the lineage's stages were trained with different tokenizers ({', '.join(sorted(want))})")
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            raise ConfigError(f"{src / name}: tokenizer file missing; a release needs the tokenizer the run used")
        shutil.copyfile(src / name, out / name)
    sha = sha256_file(out / "tokenizer.json")
    if sha not in want:
        raise ConfigError(f"{src / 'tokenizer.json'}: sha256 {sha} is not the tokenizer the run trained with")
    # The ids come from the tokenizer itself (a mixture's manifest records no pad id); `atom audit` does the same.
    from data_pipeline.tokens.encoding import open_tokenizer

    _, info, _ = open_tokenizer(out, "auto")
    tok = manifest["tokenizer"]
    if (info["eos_id"], info["vocab_size"]) != (tok["eos_id"], tok["vocab_size"]):
        raise ConfigError(f"{src}: tokenizer gives eos id {info['eos_id']} / vocab {info['vocab_size']}, the data "
                          f"manifest says {tok['eos_id']} / {tok['vocab_size']}")
    return {"sha256": sha, "eos_id": info["eos_id"], "pad_id": info["pad_id"], "vocab_size": info["vocab_size"],
            "files": list(TOKENIZER_FILES)}
