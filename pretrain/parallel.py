"""How the model is spread over ranks, kept apart from what the model is (torchtitan's split).

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
picks gloo on CPU, NCCL on CUDA. `parallelize` applies FSDP2 (`fully_shard` per block, then the root)
on a 1-D mesh, or on a 2-D (replicate, shard) mesh for HSDP. Every check on the layout (world size vs
batch, mesh vs world size) runs before any process-group work, so a bad config fails fast and clearly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.config import ConfigError
from pretrain.checkpoint_state import check_checkpoint_format
from pretrain.config import PretrainConfig
from pretrain.model.transformer import Transformer


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device: 'cuda' requested but no CUDA device is available")
    return torch.device(kind)


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun/SLURM-exported variables; (0, 1, 0) without them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def check_layout(cfg: PretrainConfig, world_size: int) -> None:
    """Refuse a layout that cannot work, before any process group exists (a backend unable to read the run
    directory's checkpoints included)."""
    check_checkpoint_format(cfg)
    if world_size > 1 and cfg.parallel.backend == "none":
        raise ConfigError(f"parallel.backend=none trains one process, but the world size is {world_size}; "
                          "set parallel.backend to fsdp2 or deepspeed")
    per_rank, rest = divmod(cfg.data.global_batch, world_size)
    if rest:
        raise ConfigError(f"data.global_batch={cfg.data.global_batch} is not divisible by the world size {world_size}")
    if per_rank % cfg.trainer.micro_batch:
        raise ConfigError(f"data.global_batch / world size = {per_rank} is not a multiple of "
                          f"trainer.micro_batch={cfg.trainer.micro_batch}")
    shard = cfg.parallel.shard_size
    if shard is not None and (cfg.parallel.backend != "fsdp2" or world_size % shard):
        raise ConfigError(f"parallel.shard_size={shard} needs backend fsdp2 and must divide "
                          f"the world size {world_size}")
    if cfg.parallel.fp8_all_gather and (cfg.model.fp8 is None or cfg.parallel.backend != "fsdp2"
                                        or cfg.model.fp8.recipe != "tensorwise"):
        raise ConfigError("parallel.fp8_all_gather needs parallel.backend=fsdp2 and model.fp8.recipe=tensorwise")


def init_distributed(cfg: PretrainConfig) -> DistEnv:
    rank, world_size, local_rank = env_world()
    check_layout(cfg, world_size)
    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.parallel.fp8_all_gather and device.type != "cuda":
        raise ConfigError("parallel.fp8_all_gather needs CUDA and NCCL (gloo cannot send float8)")
    if world_size > 1 and not dist.is_initialized():
        # On GPU, NCCL for CUDA tensors and gloo beside it for the small CPU ones (loss totals, validation
        # sums, checkpoint planning).
        backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, local_rank, device)


def parallelize(model: Transformer, run_cfg: PretrainConfig, env: DistEnv) -> Transformer:
    """Activation checkpointing, then torch.compile, then FSDP2/HSDP, per block (torchtitan's order).

    Sharding is skipped for backend none, and for deepspeed, whose engine wraps the model later.
    """
    if run_cfg.trainer.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if run_cfg.trainer.compile:
        for block in model.layers:
            block.compile()
    cfg = run_cfg.parallel
    if cfg.backend != "fsdp2":
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if cfg.shard_size and cfg.shard_size < env.world_size:
        mesh = init_device_mesh(env.device.type, (env.world_size // cfg.shard_size, cfg.shard_size),
                                mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("shard",))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if cfg.mixed_precision == "bf16" else MixedPrecisionPolicy())
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value
