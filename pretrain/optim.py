"""AdamW with decoupled weight decay on matrices only, and learning-rate schedules as pure functions.

A schedule is a function of the step alone (no scheduler object with hidden state), so resuming at step
s sets exactly the learning rate an uninterrupted run had at step s.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from core.config import ConfigModel

# AdamW's moment decay rates: 1 would never forget (and divide by zero in the bias correction).
Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimizerConfig(ConfigModel):
    lr: float = Field(3e-4, gt=0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    decay_embeddings: bool = False  # OLMo 2 excludes embeddings from weight decay
    grad_clip: float | None = Field(1.0, gt=0)


class ScheduleConfig(ConfigModel):
    """cosine: warmup then cosine to min_lr_ratio*lr. wsd: warmup, stable, then `decay_fraction` of the
    run decaying linearly (or by 1-sqrt) to min_lr_ratio*lr. linear: warmup then linear to min (the
    mid-training anneal, usually with warmup_steps=0 and min_lr_ratio=0). constant: warmup then flat."""

    kind: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1)
    decay_shape: Literal["linear", "sqrt"] = "linear"

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.kind != "wsd" and self.decay_shape != "linear":
            raise ValueError("schedule.decay_shape applies to kind 'wsd' only")
        return self


def lr_multiplier(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based) of `total_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        decay_start = max(cfg.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        remaining = 1.0 - progress if cfg.decay_shape == "linear" else 1.0 - math.sqrt(progress)
        return floor + (1.0 - floor) * remaining
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps + 1) / span)
    if cfg.kind == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: nn.Parameter, decay_embeddings: bool) -> bool:
    """Norm weights, biases and (by default) embeddings are not decayed; matrices are."""
    if param.ndim < 2 or "norm" in name or name.endswith(".bias"):
        return True
    return not decay_embeddings and ("embed" in name)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param, cfg.decay_embeddings) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step for all parameters (CPU and CUDA), instead of a loop over tensors.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
