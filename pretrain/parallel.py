"""How the model is spread over ranks, kept apart from what the model is (torchtitan's split).

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
picks gloo on CPU, NCCL on CUDA. `parallelize` applies FSDP2 (`fully_shard` per block, then the root)
on a 1-D mesh, or on a 2-D (replicate, shard) mesh for HSDP. Every check on the layout (world size vs
batch, mesh vs world size) runs before any process-group work, so a bad config fails fast and clearly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

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
    ep = cfg.parallel.ep
    group = shard or world_size  # EP groups lie inside a shard group (HSDP replicates whole groups)
    if ep > 1 and group % ep:
        where = f"parallel.shard_size={shard}" if shard else f"the world size {world_size}"
        raise ConfigError(f"parallel.ep={ep} does not divide {where}: EP groups are made of data-parallel ranks")
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


@dataclass
class ExpertLayout:
    """Where a run's experts live under expert parallelism: the EP group, the FSDP mesh of the expert
    weights (the ranks holding the same experts), and the (replicate, ep, dp_mod_ep) mesh that names an
    expert tensor by its global shape in checkpoints."""

    ep_group: dist.ProcessGroup
    fsdp_mesh: Any  # DeviceMesh
    global_mesh: Any  # DeviceMesh


def expert_parallel_meshes(device_type: str, world_size: int, shard_size: int, ep: int) -> ExpertLayout:
    """Rank r = (replica * shard_size) + (m * ep) + e: EP groups are runs of `ep` consecutive ranks inside a
    shard group, and rank e of every EP group in a replica holds the same experts (the dp_mod_ep ranks)."""
    from torch.distributed.device_mesh import DeviceMesh

    replicas, per_group = world_size // shard_size, shard_size // ep
    ranks = torch.arange(world_size).view(replicas, per_group, ep).permute(0, 2, 1)
    mesh = DeviceMesh(device_type, ranks, mesh_dim_names=("replicate", "ep", "dp_mod_ep"))
    fsdp_mesh = mesh["replicate", "dp_mod_ep"] if replicas > 1 else mesh["dp_mod_ep"]
    return ExpertLayout(mesh["ep"].get_group(), fsdp_mesh, mesh)


def apply_expert_parallel(model: Transformer, layout: ExpertLayout | None, n_experts: int) -> None:
    """Keep this rank's experts in every MoE layer and route tokens to the others by all-to-all."""
    from pretrain.expert_parallel import ExpertParallel, shard_experts

    for moe in model.moe_layers().values():
        ep = ExpertParallel(layout.ep_group if layout is not None else None, n_experts)
        shard_experts(moe.experts, ep)
        moe.dispatch = ep.run
    model.expert_layout = layout


def parallelize(model: Transformer, run_cfg: PretrainConfig, env: DistEnv) -> Transformer:
    """Expert parallelism, then activation checkpointing, then torch.compile, then FSDP2/HSDP, per block
    (torchtitan's order). Under EP the experts of each block are sharded first, on their own mesh.

    Sharding is skipped for backend none, and for deepspeed, whose engine wraps the model later.
    """
    cfg = run_cfg.parallel
    layout = None
    moe_layers = list(model.moe_layers().values())
    if cfg.ep > 1:
        layout = expert_parallel_meshes(env.device.type, env.world_size, cfg.shard_size or env.world_size, cfg.ep)
        assert run_cfg.model.moe is not None  # checked with the config
        apply_expert_parallel(model, layout, run_cfg.model.moe.n_experts)
    if run_cfg.trainer.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if run_cfg.trainer.compile:
        for block in model.layers:
            block.compile()
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
    if layout is not None:
        for moe in moe_layers:  # (their gradients are finished by `finish_expert_grads`)
            fully_shard(moe.experts, mesh=layout.fsdp_mesh, mp_policy=mp)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@torch.no_grad()
def finish_expert_grads(model: nn.Module) -> None:
    """Under expert parallelism, after the gradients are reduced: FSDP averaged each expert gradient over
    the expert mesh (world / ep ranks), but each rank's gradient already sums the rows of a whole EP group,
    so one more division by ep gives the mean gradient of one process. (FSDP2's own divide factor would
    do this inside the reduction, but needs a PREMUL_SUM reduction that gloo lacks.)"""
    layout: ExpertLayout | None = getattr(model, "expert_layout", None)
    if layout is None:
        return
    from pretrain.expert_parallel import is_expert_param

    ep = dist.get_world_size(layout.ep_group)
    for name, p in model.named_parameters():
        if p.grad is not None and is_expert_param(name):
            p.grad.div_(ep)


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """Clip the gradients to `max_norm` (None: only measure) and return their global norm.

    Under expert parallelism the expert gradients live on another mesh than the dense ones and each EP
    rank holds other experts: their squared norms are summed over the EP group and added to the dense
    part, so every rank clips by the same global norm, the one a single process would compute.
    """
    layout: ExpertLayout | None = getattr(model, "expert_layout", None)
    if layout is None:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
        return float(total.full_tensor() if hasattr(total, "full_tensor") else total)
    from pretrain.expert_parallel import is_expert_param

    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    squares = []
    for expert in (False, True):
        grads = [g for name, g in named if is_expert_param(name) == expert]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=named[0][1].device)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        squares.append(norm.float() ** 2)
    dist.all_reduce(squares[1], group=layout.ep_group)
    global_norm = float((squares[0] + squares[1]).sqrt())
    if max_norm is not None and global_norm > 0:
        coef = min(1.0, max_norm / (global_norm + 1e-6))
        if coef < 1.0:
            for _, g in named:
                g.mul_(coef)
    return global_norm


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value
