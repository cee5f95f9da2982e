"""`atom soup CONFIG`: average the weights of several runs of one model into one checkpoint.

Souping (model soups; OLMo 2/3 average mid-training runs of different seeds or data orders) needs
identical model configs. The output is a run directory with one complete checkpoint (the same layout
training writes, so `atom midtrain`, `atom release` and the audit read it unchanged) and `soup.json`
naming every input checkpoint with its hash and weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import torch.distributed.checkpoint as dcp
from pydantic import Field, model_validator

from core.config import ConfigError, StageConfig
from core.rundir import RunDir, write_json
from core.stage import Stage
from midtrain.config import Parent, find_parent
from pretrain.checkpoint import CheckpointConfig, Checkpointer, checkpoint_digest
from pretrain.checkpoint_state import DCP_DIR, load_model_weights
from pretrain.model.transformer import Transformer


class SoupConfig(StageConfig):
    inputs: list[str] = Field(min_length=2)  # run directories (newest complete checkpoint) or checkpoints
    weights: list[Annotated[float, Field(gt=0, le=1)]] | None = None  # default: uniform

    @model_validator(mode="after")
    def _check(self) -> SoupConfig:
        if self.weights is not None and len(self.weights) != len(self.inputs):
            raise ValueError(f"weights: {len(self.weights)} weights for {len(self.inputs)} inputs")
        if self.weights is not None and abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"weights: must sum to 1, got {sum(self.weights)}")
        return self


def load_model_state(parent: Parent) -> dict[str, torch.Tensor]:
    model = Transformer(parent.model)
    load_model_weights(model, parent.checkpoint.path)
    return model.state_dict()


def average(states: list[dict[str, torch.Tensor]], weights: list[float] | None) -> dict[str, torch.Tensor]:
    """Elementwise (weighted) mean of state dicts with identical keys and shapes."""
    out = {}
    for key in states[0]:
        stacked = torch.stack([s[key] for s in states])
        if weights is None:
            out[key] = stacked.mean(0)
        else:
            w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
            out[key] = (stacked * w).sum(0)
    return out


def plan(cfg: SoupConfig) -> list[str]:
    parents = [find_parent(p) for p in cfg.inputs]
    _check_same_model(parents, cfg.inputs)
    return [f"average {len(parents)} checkpoints: " + ", ".join(str(p.checkpoint.path) for p in parents),
            f"weights {cfg.weights or 'uniform'}; write one checkpoint and soup.json into {cfg.run.dir}"]


def _check_same_model(parents: list[Parent], inputs: list[str]) -> None:
    for parent, name in zip(parents[1:], inputs[1:], strict=True):
        if parent.model != parents[0].model:
            raise ConfigError(f"inputs: {name} has a different model config from {inputs[0]}; only runs of one "
                              "model can be souped")


def stage_inputs(cfg: SoupConfig) -> dict[str, str | Path]:
    """The checkpoints averaged."""
    return {f"inputs.{i}": find_parent(p).checkpoint.path for i, p in enumerate(cfg.inputs)}


def run(cfg: SoupConfig) -> Path:
    parents = [find_parent(p) for p in cfg.inputs]
    _check_same_model(parents, cfg.inputs)
    run_dir = RunDir.claim(cfg.run.dir, "soup", cfg, cfg.run.overwrite,
                           inputs=stage_inputs(cfg))
    soup = average([load_model_state(p) for p in parents], cfg.weights)
    step = max(p.checkpoint.step for p in parents)
    trainer_state = {"step": step, "tokens_seen": max(p.state.get("tokens_seen", 0) for p in parents),
                     "model": parents[0].model.to_dict(), "soup_of": [str(p.checkpoint.path) for p in parents]}
    checkpointer = Checkpointer(run_dir.file("checkpoints"), CheckpointConfig(keep_last=1))
    path = checkpointer.save(step, lambda d: dcp.save({"app": {"model": soup}}, checkpoint_id=str(d / DCP_DIR)),
                             trainer_state)
    write_json(run_dir.file("soup.json"), {
        "inputs": [{"checkpoint": str(p.checkpoint.path), "step": p.checkpoint.step,
                    "content_sha256": checkpoint_digest(p.checkpoint.path)} for p in parents],
        "weights": cfg.weights or [1 / len(parents)] * len(parents),
        "output": {"checkpoint": str(path), "content_sha256": checkpoint_digest(path)}})
    run_dir.logger().info(f"souped {len(parents)} checkpoints into {path}")
    return path


STAGE = Stage("soup", "average the weights of several runs of one model into one checkpoint", SoupConfig, plan, run,
              stage_inputs)
