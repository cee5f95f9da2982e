"""A run's lineage, and which tokens and documents each of its stages trained on.

A pretraining run directory is one stage. A mid-training run (or any run started with `init_from`) names
its parent checkpoint, in `midtrain.json` or in its config's `init_from`; following those links gives the
chain pretrain -> midtrain -> ..., oldest first. Each stage contributes the steps up to the checkpoint
its child started from (the last stage: up to the released checkpoint).

The functions at the bottom work from the training manifest alone (no token shards): which windows
every step read, hence which stream tokens, hence (through a provenance table) which documents. The
window order is recomputed with the trainer's own `WindowOrder`, so it is the order that trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.config import ConfigError, deep_merge
from pretrain.checkpoint import COMPLETE, TRAINER_STATE, Checkpoint, checkpoint_digest, list_checkpoints, verify
from pretrain.data import WindowOrder
from pretrain.train_manifest import TRAIN_MANIFEST, read_train_manifest

CONFIG = "config.yaml"
MIDTRAIN = "midtrain.json"
PARENT_KEYS = ("parent_checkpoint", "checkpoint", "init_from", "parent", "path", "run_dir")


@dataclass
class StageRecord:
    """One run directory of the lineage and the checkpoint of it that counts."""

    run_dir: Path
    kind: str  # "pretrain", "midtrain", ... (from the config header)
    config: dict[str, Any]
    config_text: str
    header: dict[str, Any]  # the training manifest's step-0 record
    records: list[dict[str, Any]]  # its per-step records, up to `step`
    checkpoint: Checkpoint  # the released one (last stage) or the one the child started from
    model: dict[str, Any]  # the resolved model config the checkpoint holds
    parent: Checkpoint | None = None

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def seq_len(self) -> int:
        return int(self.header["seq_len"])

    @property
    def global_batch(self) -> int:
        return int(self.header["global_batch"])


def read_config(run_dir: Path) -> tuple[str, dict[str, Any], str]:
    """(stage kind, config tree, file text) of a run directory's resolved config."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a training run directory (no {CONFIG})")
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    kind = first.removeprefix("# atom ").removesuffix(" config").strip() if first.startswith("# atom ") else "train"
    tree = yaml.safe_load(text)
    if kind == "soup":
        raise ConfigError(f"{run_dir}: a soup (weight average of several runs) cannot be released yet: "
                          "release a run trained from it, or one of its inputs")
    if not isinstance(tree, dict) or "data" not in tree or "trainer" not in tree:
        raise ConfigError(f"{path}: not a training config (no data or trainer section)")
    return kind, tree, text


def checkpoint_at(run_dir: Path, step: int | None) -> Checkpoint:
    """The checkpoint at `step` (None: the newest); it must be complete and verify."""
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise ConfigError(f"{run_dir}: no checkpoints (nothing under {run_dir / 'checkpoints'}); "
                          "a release needs a complete checkpoint")
    chosen = ckpts[0] if step is None else next((c for c in ckpts if c.step == step), None)
    if chosen is None:
        raise ConfigError(f"{run_dir}: no checkpoint at step {step} (have {', '.join(str(c.step) for c in ckpts)})")
    problem = verify(chosen, hashes=True)
    if problem:
        others = [c.step for c in ckpts if c.step != chosen.step]
        hint = f"; choose another with --step ({', '.join(map(str, others))})" if others else ""
        raise ConfigError(f"{run_dir}: checkpoint {chosen.path.name} is not complete or is damaged: {problem}{hint}")
    return chosen


def _as_checkpoint(path: Path, step: int | None) -> Checkpoint:
    if (path / COMPLETE).is_file() or path.name.startswith("step_"):
        return Checkpoint(path, int(json.loads((path / COMPLETE).read_text())["step"]) if (path / COMPLETE).is_file()
                          else int(path.name[5:]))
    if path.name == "dcp" and (path.parent / COMPLETE).is_file():
        return _as_checkpoint(path.parent, step)
    return checkpoint_at(path, step)  # a run directory (+ step)


def parent_checkpoint(run_dir: Path, config: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint this run started from: `midtrain.json`'s parent, else the config's `init_from`."""
    ref: Any = None
    step = None
    meta = run_dir / MIDTRAIN
    pinned = None
    if meta.is_file():
        data = json.loads(meta.read_text())
        node = data.get("parent", data) if isinstance(data.get("parent"), dict) else data
        step, pinned = node.get("step"), node.get("content_sha256")
        ref = next((node[k] for k in PARENT_KEYS if isinstance(node.get(k), str)), None)
        if ref is None:
            raise ConfigError(f"{meta}: names no parent (expected one of {', '.join(PARENT_KEYS)})")
    elif config.get("init_from"):
        ref = config["init_from"]
    if ref is None:
        return None
    # Paths in configs are relative to where the stage ran (usually the repository root); fall back to the run
    # directory for lineages moved together.
    path = next((p for p in (Path(ref), run_dir / ref) if p.exists()), Path(ref))
    if not path.exists():
        raise ConfigError(f"{run_dir}: its parent {ref} does not exist; the lineage cannot be released")
    ckpt = _as_checkpoint(path.resolve(), step)
    if pinned and checkpoint_digest(ckpt.path) != pinned:
        raise ConfigError(f"{meta}: parent checkpoint {ckpt.path} changed since this run started from it "
                          f"(COMPLETE.json sha256 differs)")
    return ckpt


def run_of(ckpt: Checkpoint) -> Path:
    if ckpt.path.parent.name != "checkpoints":
        raise ConfigError(f"{ckpt.path}: a parent checkpoint must sit in RUN_DIR/checkpoints/ to find its run")
    return ckpt.path.parent.parent


def resolved_model(config: dict[str, Any], midtrain_meta: dict[str, Any] | None) -> dict[str, Any]:
    """The full model config of a stage: a pretraining config's `model`, or a mid-training config's model
    changes over the parent model that `midtrain.json` records."""
    if midtrain_meta is not None and isinstance((midtrain_meta.get("parent") or {}).get("model"), dict):
        return deep_merge(midtrain_meta["parent"]["model"], config.get("model") or {})
    return config["model"]


def load_stage_record(run_dir: Path, ckpt: Checkpoint) -> StageRecord:
    kind, tree, text = read_config(run_dir)
    manifest = run_dir / TRAIN_MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{run_dir}: no {TRAIN_MANIFEST} (the training manifest)")
    header, records = read_train_manifest(manifest)
    records = [r for r in records if r["step"] <= ckpt.step]
    if [r["step"] for r in records] != list(range(1, ckpt.step + 1)):
        raise ConfigError(f"{manifest}: records steps {records[0]['step'] if records else '-'}.."
                          f"{records[-1]['step'] if records else '-'}, not 1..{ckpt.step} of {ckpt.path.name}")
    meta = json.loads((run_dir / MIDTRAIN).read_text()) if (run_dir / MIDTRAIN).is_file() else None
    model = trainer_state(ckpt).get("model") or resolved_model(tree, meta)
    return StageRecord(run_dir, kind, tree, text, header, records, ckpt, model)


def lineage(run_dir: Path, step: int | None = None, max_depth: int = 16) -> list[StageRecord]:
    """The stages behind `run_dir`'s checkpoint at `step` (None: newest), oldest first."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    read_config(run_dir)
    stages: list[StageRecord] = []
    ckpt: Checkpoint | None = checkpoint_at(run_dir, step)
    while ckpt is not None:
        if len(stages) >= max_depth:
            raise ConfigError(f"{run_dir}: lineage deeper than {max_depth} stages (a cycle?)")
        stage = load_stage_record(run_dir, ckpt)
        stage.parent = parent_checkpoint(run_dir, stage.config)
        stages.append(stage)
        if stage.parent is None:
            break
        ckpt = stage.parent
        run_dir = run_of(ckpt)
    return stages[::-1]


# ---- tokens and documents from the training manifest -------------------------------------------


def trained_windows(header: dict[str, Any], records: list[dict[str, Any]]) -> np.ndarray:
    """[steps, global_batch] window indices each step read, recomputed with the trainer's loader."""
    order = WindowOrder.from_header(header)
    if not records:
        return np.zeros((0, order.global_batch), dtype=np.int64)
    return np.stack([order.global_windows(int(r["batch"])) for r in records])


def batches_per_epoch(header: dict[str, Any]) -> int:
    return WindowOrder.from_header(header).batches_per_epoch


def touched_documents(doc_ends: np.ndarray, windows: np.ndarray, seq_len: int) -> np.ndarray:
    """Boolean mask over documents (given their cumulative token ends in stream order) that any of
    `windows` reads: window w reads stream tokens [w*L, w*L + L] inclusive."""
    flat = np.unique(windows.reshape(-1)).astype(np.int64)
    first = np.searchsorted(doc_ends, flat * seq_len, side="right")
    last = np.searchsorted(doc_ends, flat * seq_len + seq_len, side="right")
    marks = np.zeros(len(doc_ends) + 1, dtype=np.int64)
    np.add.at(marks, np.minimum(first, len(doc_ends)), 1)
    np.add.at(marks, np.minimum(last + 1, len(doc_ends)), -1)
    return np.cumsum(marks[:-1]) > 0


def trained_tokens_digest(token_windows: Any, windows: np.ndarray) -> str:
    """sha256 over every step's windows in order, each window's L+1 tokens as little-endian uint32."""
    digest = hashlib.sha256()
    for w in windows.reshape(-1):
        tokens, _ = token_windows.read(int(w), False)
        digest.update(tokens.astype("<u4").tobytes())
    return digest.hexdigest()


def trainer_state(ckpt: Checkpoint) -> dict[str, Any]:
    return json.loads((ckpt.path / TRAINER_STATE).read_text())
