"""Engines: the one place where FSDP2 (or a single process) and DeepSpeed differ.

The training loop talks to an `Engine` only: forward through `engine.model`, `backward` per micro-batch
inside `accumulate`, then `step` (clip, apply, zero), `save`/`load` for checkpoints and `load_weights` for
`init_from`. The FSDP engine (also used for one process) keeps the model and an AdamW and checkpoints
through torch.distributed.checkpoint; the DeepSpeed engine (`deepspeed_engine.py`) hands both to
`deepspeed.initialize` with a config generated from ours and checkpoints through DeepSpeed, so the loop,
data, manifests and metrics stay identical whichever backend the config names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from pretrain.checkpoint import Checkpoint, Checkpointer
from pretrain.checkpoint_state import DCP_DIR, TrainState, load_model_weights
from pretrain.config import PretrainConfig
from pretrain.converters import build_converted
from pretrain.optim import build_optimizer, set_lr
from pretrain.parallel import DistEnv, clip_grad_norm, finish_expert_grads, parallelize

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


class Engine(Protocol):
    """What the training loop needs from a backend; FSDPEngine and DeepSpeedEngine implement it."""

    @property
    def model(self) -> nn.Module: ...  # the (wrapped) module the loop calls forward on

    skips_nonfinite: bool  # True: a non-finite step is skipped by the engine itself (nothing applied)

    def set_lr(self, lr: float) -> None: ...

    def accumulate(self, is_last: bool) -> contextlib.AbstractContextManager[None]:
        """Around each micro-batch's forward and backward; gradients are reduced on the last one."""
        ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, max_norm: float | None, loss_is_finite: bool) -> float | None:
        """Clip to `max_norm`, apply and zero the gradients; the gradient norm, or None if nothing applied."""
        ...

    def zero_grad(self) -> None: ...

    def expert_load(self) -> dict[str, float]: ...

    def load_counters(self) -> dict: ...

    def restore_load_counters(self, counters: dict) -> None: ...

    def save(self, checkpointer: Checkpointer, step: int, trainer_state: dict, blocking: bool = True) -> Path: ...

    def load(self, checkpointer: Checkpointer, ckpt: Checkpoint) -> dict: ...

    def load_weights(self, ckpt_dir: Path, with_optimizer: bool = False) -> None: ...


class FSDPEngine:
    """One process, or FSDP2/HSDP over many: the model is sharded in place and trained with AdamW."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv):
        self.cfg = cfg
        model, self._converters = build_converted(cfg)
        self.model = parallelize(model.to(env.device), cfg, env)
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
            cast("FSDPModule", self.model).set_requires_gradient_sync(is_last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    skips_nonfinite = True

    def step(self, max_norm: float | None, loss_is_finite: bool) -> float | None:
        """Clip and apply the accumulated gradients; None (and nothing applied) if loss or norm is not finite."""
        finish_expert_grads(self.model)
        norm = clip_grad_norm(self.model, max_norm)
        if not (loss_is_finite and math.isfinite(norm)):
            self.zero_grad()
            return None
        self.optimizer.step()
        self.zero_grad()
        self.model.update_expert_bias()
        for converter in self._converters:
            converter.post_optimizer_step(self.model)
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
        app = {"app": TrainState(self.model, self.optimizer)}

        def write(d: Path) -> Any:  # None, or the Future of a background write
            if not self.cfg.checkpoint.async_save:
                dcp.save(app, checkpoint_id=str(d / DCP_DIR))
                return None
            return dcp.async_save(app, checkpoint_id=str(d / DCP_DIR), process_group=self._async_group)

        return checkpointer.save(step, write, trainer_state, blocking)

    def load(self, checkpointer: Checkpointer, ckpt: Checkpoint) -> dict:
        app = {"app": TrainState(self.model, self.optimizer)}
        return checkpointer.load(ckpt, lambda d: dcp.load(app, checkpoint_id=str(d / DCP_DIR)))

    def load_weights(self, ckpt_dir: Path, with_optimizer: bool = False) -> None:
        """Mid-training's start (`init_from`): the weights, and the optimizer state if asked; the data
        order, step count and schedule start fresh."""
        load_model_weights(self.model, ckpt_dir, self.optimizer if with_optimizer else None)


def build_engine(cfg: PretrainConfig, env: DistEnv) -> Engine:
    if cfg.parallel.backend == "deepspeed":
        from pretrain.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, env)
    return FSDPEngine(cfg, env)
