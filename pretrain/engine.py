"""Engines: the one place where FSDP2 (or a single process) and DeepSpeed differ.

The training loop talks to an engine only: forward through `engine.model`, then `backward`,
`clip_grad_norm`, `optimizer_step`, `save`/`load`. The FSDP engine (also used for one process) keeps
the model and an AdamW and checkpoints through torch.distributed.checkpoint; the DeepSpeed engine hands
both to `deepspeed.initialize` with a config generated from ours and checkpoints through DeepSpeed, so
the loop, data, manifests and metrics stay identical whichever backend the config names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from core.config import ConfigError
from pretrain.checkpoint import Checkpoint, Checkpointer, list_checkpoints
from pretrain.config import PretrainConfig
from pretrain.deepspeed_engine import DS_DIR
from pretrain.optim import build_optimizer, set_lr
from pretrain.parallel import DistEnv, parallelize

DCP_DIR = "dcp"


class _AppState(Stateful):
    """Model + optimizer as one DCP entry; (re)sharded on load to whatever layout is live."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {"model": get_state_dict(self.model, [])[0]}
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is None:
            set_state_dict(self.model, [], model_state_dict=state["model"], optim_state_dict={},
                           options=StateDictOptions(strict=True))
            return
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class FSDPEngine:
    """One process, or FSDP2/HSDP over many: the model is sharded in place and trained with AdamW."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv):
        self.cfg = cfg
        self.model = parallelize(cfg.model.build(cfg.parallel.fp8_all_gather).to(env.device), cfg, env)
        self._fp8_all_gather = cfg.parallel.fp8_all_gather
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self._sharded = cfg.parallel.backend == "fsdp2"
        # A background write coordinates ranks on its own gloo group, apart from the training collectives.
        self._async_group = None
        if cfg.checkpoint.async_save and dist.is_initialized():
            self._async_group = dist.new_group(backend="gloo")

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    @contextlib.contextmanager
    def accumulate(self, is_last: bool) -> Iterator[None]:
        """Gradients are reduced across ranks on the last micro-batch only."""
        if self._sharded:
            self.model.set_requires_gradient_sync(is_last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    skips_nonfinite = True

    def step(self, max_norm: float | None, loss_is_finite: bool) -> float | None:
        """Clip and apply the accumulated gradients; None (and nothing applied) if loss or norm is not finite."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm or float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = norm.item()
        if not (loss_is_finite and math.isfinite(norm)):
            self.zero_grad()
            return None
        self.optimizer.step()
        self.zero_grad()
        self.model.update_expert_bias()
        if self._fp8_all_gather:  # one all-reduce for every layer's float8 scale, instead of one per layer
            from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

            precompute_float8_dynamic_scale_for_fsdp(self.model)
        return norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def expert_load(self) -> dict[str, float]:
        return self.model.expert_load(reset=True)

    def load_counters(self) -> dict:
        return self.model.load_counters()

    def restore_load_counters(self, counters: dict) -> None:
        self.model.restore_load_counters(counters)

    def save(self, checkpointer: Checkpointer, step: int, trainer_state: dict, blocking: bool = True) -> Path:
        app = {"app": _AppState(self.model, self.optimizer)}

        def write(d: Path) -> Future | None:
            if not self.cfg.checkpoint.async_save:
                dcp.save(app, checkpoint_id=str(d / DCP_DIR))
                return None
            return dcp.async_save(app, checkpoint_id=str(d / DCP_DIR), process_group=self._async_group)

        return checkpointer.save(step, write, trainer_state, blocking)

    def load(self, checkpointer: Checkpointer, ckpt: Checkpoint) -> dict:
        app = {"app": _AppState(self.model, self.optimizer)}
        return checkpointer.load(ckpt, lambda d: dcp.load(app, checkpoint_id=str(d / DCP_DIR)))

    def load_weights(self, ckpt_dir: Path, with_optimizer: bool = False) -> None:
        """Mid-training's start (`init_from`): the weights, and the optimizer state if asked; the data
        order, step count and schedule start fresh."""
        app = {"app": _AppState(self.model, self.optimizer if with_optimizer else None)}
        dcp.load(app, checkpoint_id=str(_dcp_dir(ckpt_dir)))


def _dcp_dir(ckpt_dir: Path) -> Path:
    return ckpt_dir / DCP_DIR if (ckpt_dir / DCP_DIR).is_dir() else ckpt_dir


def check_checkpoint_format(cfg: PretrainConfig) -> None:
    """Refuse a run directory whose checkpoints the configured backend cannot read, before any training work.

    Backends none and fsdp2 share one format (DCP, loadable on any number of ranks); DeepSpeed has its own
    and neither family converts the other's. Without this check a switch passes the config comparison on
    resume (`parallel` may change) and fails halfway through loading with a raw assertion."""
    deepspeed = cfg.parallel.backend == "deepspeed"
    ours, theirs, writer = (DS_DIR, DCP_DIR, "none or fsdp2") if deepspeed else (DCP_DIR, DS_DIR, "deepspeed")
    for ckpt in list_checkpoints(Path(cfg.run.dir) / "checkpoints"):
        if (ckpt.path / theirs).is_dir() and not (ckpt.path / ours).is_dir():
            raise ConfigError(f"{ckpt.path}: written by parallel.backend {writer} ({theirs}/), which "
                              f"parallel.backend={cfg.parallel.backend} cannot resume from; resume with "
                              f"parallel.backend {writer}, or train in another run.dir")


def build_engine(cfg: PretrainConfig, env: DistEnv):
    if cfg.parallel.backend == "deepspeed":
        from pretrain.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, env)
    return FSDPEngine(cfg, env)
