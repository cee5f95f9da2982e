"""The DeepSpeed backend: ZeRO stage 1, 2 or 3 over our model and our AdamW, configured from our config.

The DeepSpeed JSON is generated (`deepspeed_config`); `parallel.deepspeed_extra` is merged on top for
settings we do not model. Gradient accumulation and clipping happen inside DeepSpeed, so its config gets
the same micro-batch, accumulation steps and clip value the FSDP engine would use. DeepSpeed cannot
skip an optimizer step outside fp16 loss scaling, so a non-finite step stops the run (the last
checkpoint is intact; resume from it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError, deep_merge
from pretrain.checkpoint import Checkpoint, Checkpointer
from pretrain.checkpoint_state import DS_DIR
from pretrain.config import PretrainConfig
from pretrain.converters import build_converted
from pretrain.optim import build_optimizer, set_lr
from pretrain.parallel import DistEnv, parallelize

DS_TAG = "state"
DEFAULT_BUCKET = 500_000_000
MIN_BUCKET = 1_000_000


def deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict[str, Any]:
    micro = cfg.trainer.micro_batch
    accum = cfg.data.global_batch // (world_size * micro)
    bucket = int(min(DEFAULT_BUCKET, max(MIN_BUCKET, cfg.model.num_params())))
    generated = {
        "train_batch_size": cfg.data.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optimizer.grad_clip or 0.0,
        # Communication buckets no larger than the model: DeepSpeed's 5e8-element defaults would allocate
        # gigabytes for a small model; large models keep the defaults.
        "zero_optimization": {"stage": cfg.parallel.zero_stage, "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket, "stage3_prefetch_bucket_size": bucket},
        "bf16": {"enabled": cfg.parallel.mixed_precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    return deep_merge(generated, cfg.parallel.deepspeed_extra)


class DeepSpeedEngine:
    skips_nonfinite = False

    def __init__(self, cfg: PretrainConfig, env: DistEnv):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if env.device.type == "cuda" else "cpu")
        import deepspeed

        if env.world_size > 1 and not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if env.device.type == "cuda" else "gloo")
        if cfg.init_from:
            raise ConfigError("init_from: weights-only initialisation is implemented for parallel.backend "
                              "'none'/'fsdp2'; convert the checkpoint or use fsdp2")
        built, self._converters = build_converted(cfg)
        model = parallelize(built.to(env.device), cfg, env)
        optimizer = build_optimizer(model, cfg.optimizer)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, env.world_size))
        self.model = self.ds

    def set_lr(self, lr: float) -> None:
        set_lr(self.ds.optimizer, lr)

    @contextlib.contextmanager
    def accumulate(self, is_last: bool) -> Iterator[None]:
        yield  # DeepSpeed reduces at its own accumulation boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # the loop already divided by the micro-batch count
        if not self.ds.is_gradient_accumulation_boundary():
            self.ds.step()  # only advances DeepSpeed's micro-step counter

    def step(self, max_norm: float | None, loss_is_finite: bool) -> float | None:
        """DeepSpeed clips inside `ds.step()` to the `gradient_clipping` it was initialised with; a different
        `max_norm` cannot be honoured per step, so it is refused rather than ignored."""
        if (max_norm or 0.0) != self.ds.gradient_clipping():
            raise ValueError(f"max_norm {max_norm}: DeepSpeed clips to gradient_clipping="
                             f"{self.ds.gradient_clipping()} from its config (optimizer.grad_clip)")
        if not loss_is_finite:
            return None
        self.ds.step()  # clips to gradient_clipping, steps, zeroes
        self.ds.module.update_expert_bias()
        for converter in self._converters:
            converter.post_optimizer_step(self.ds.module)
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def zero_grad(self) -> None:
        self.ds.zero_grad()

    def expert_load(self) -> dict[str, float]:
        return self.ds.module.expert_load(reset=True)

    def load_counters(self) -> dict:
        return self.ds.module.load_counters()

    def restore_load_counters(self, counters: dict) -> None:
        self.ds.module.restore_load_counters(counters)

    def save(self, checkpointer: Checkpointer, step: int, trainer_state: dict, blocking: bool = True) -> Path:
        def write(d: Path) -> None:  # synchronous: the config refuses checkpoint.async_save with DeepSpeed
            self.ds.save_checkpoint(str(d / DS_DIR), tag=DS_TAG)

        return checkpointer.save(step, write, trainer_state)

    def load(self, checkpointer: Checkpointer, ckpt: Checkpoint) -> dict:
        def read(d: Path) -> None:
            path, _ = self.ds.load_checkpoint(str(d / DS_DIR), tag=DS_TAG)
            if path is None:
                raise RuntimeError(f"{d / DS_DIR}: DeepSpeed found no checkpoint to load")

        return checkpointer.load(ckpt, read)

    def load_weights(self, ckpt_dir: Path, with_optimizer: bool = False) -> None:
        raise ConfigError("init_from is not supported with parallel.backend=deepspeed")
