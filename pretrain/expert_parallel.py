"""Expert parallelism (EP): the experts of every MoE layer split over the ranks of an EP group.

Each of the `ep` ranks of a group holds n_experts / ep consecutive experts. A layer routes its tokens
as without EP (the router is dense and replicated), then:

    sort (token, slot) rows by expert          -> rows for destination rank j are contiguous
    all-to-all of the per-expert row counts    -> received[i, l]: rows source i sends my local expert l
    all-to-all of the rows (autograd-aware)    -> received rows, source-major
    permute to expert-major (`dispatch_plan`)  -> one grouped GEMM over the local experts
    inverse permutation, all-to-all back       -> each source gets its rows' outputs in its own order

Dropless: every row reaches its expert, however uneven the load. The layout follows torchtitan's
"dp2ep": the EP ranks are data-parallel ranks, so dense parameters stay sharded over the whole
data-parallel mesh while expert parameters are sharded (FSDP2) over the ranks that hold the same
experts (`dp_mod_ep`), with their gradients divided by the full data-parallel size (see
`pretrain/parallel.py`). Checkpoints name each expert tensor by its global shape (see
`checkpoint_view`), so a run saved under one EP degree loads under any other, or without EP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

EXPERT_PARAMS = ("gate_up_proj", "down_proj")  # Experts' stacked [expert, out, in] weights


def dispatch_plan(received: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each received row goes: `received[i, l]` rows came from source rank i for local expert l, laid
    out source-major (source 0's rows for experts 0..L-1, then source 1's, ...). Returns `perm` with
    `rows[perm]` expert-major (expert 0's rows from source 0, 1, ..., then expert 1's, ...) and the rows
    per local expert."""
    n_src, n_local = received.shape
    lengths = received.flatten()
    starts = torch.cumsum(lengths, 0) - lengths  # first row of each (source, expert) block
    blocks = torch.arange(n_src * n_local, device=received.device).view(n_src, n_local).t().flatten()
    block_len, block_start = lengths[blocks], starts[blocks]
    total = int(lengths.sum())
    within = torch.arange(total, device=received.device) - torch.repeat_interleave(
        torch.cumsum(block_len, 0) - block_len, block_len)
    return torch.repeat_interleave(block_start, block_len) + within, received.sum(0)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits whose backward is the reverse exchange."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


@dataclass
class ExpertParallel:
    """One MoE layer's EP group: `size` ranks, this one holding experts [rank * local, (rank + 1) * local)."""

    group: dist.ProcessGroup | None  # None: a group of one (the dispatch path still runs, without exchange)
    n_experts: int

    def __post_init__(self) -> None:
        self.size = dist.get_world_size(self.group) if self.group is not None else 1
        self.rank = dist.get_rank(self.group) if self.group is not None else 0
        self.local = self.n_experts // self.size

    def exchange(self, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        if self.group is None:
            return x
        return _AllToAll.apply(x, out_splits, in_splits, self.group)

    def received_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """[size, local]: rows each source sends to each of this rank's experts (from everyone's `counts`)."""
        if self.group is None:
            return counts.view(1, -1)
        out = torch.empty_like(counts)
        dist.all_to_all_single(out, counts, group=self.group)
        return out.view(self.size, self.local)

    def run(self, experts: nn.Module, rows: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The experts' outputs for `rows` (sorted by global expert, `counts` per expert), wherever the experts
        live; and how many rows this rank's experts received."""
        received = self.received_counts(counts)
        in_splits_t = counts.view(self.size, self.local).sum(1)
        # One host sync for both split lists: all_to_all_single takes them as Python ints.
        splits = torch.cat([in_splits_t, received.sum(1)]).tolist()
        in_splits, out_splits = splits[:self.size], splits[self.size:]
        arrived = self.exchange(rows, out_splits, in_splits)
        perm, local_counts = dispatch_plan(received)
        out = experts(arrived[perm], local_counts)
        back = torch.empty_like(out).index_copy_(0, perm, out)  # the inverse permutation, without a sort
        return self.exchange(back, in_splits, out_splits), sum(out_splits)


def local_slice(n_experts: int, ep_size: int, ep_rank: int) -> slice:
    local = n_experts // ep_size
    return slice(ep_rank * local, (ep_rank + 1) * local)


def shard_experts(experts: nn.Module, ep: ExpertParallel) -> None:
    """Keep only this rank's experts of a full (identically initialised) Experts module."""
    keep = local_slice(ep.n_experts, ep.size, ep.rank)
    for name in EXPERT_PARAMS:
        full = getattr(experts, name)
        setattr(experts, name, nn.Parameter(full.detach()[keep].clone()))


def is_expert_param(fqn: str) -> bool:
    return ".experts." in fqn and fqn.rsplit(".", 1)[-1] in EXPERT_PARAMS


def checkpoint_view(local: Any, global_mesh: Any) -> Any:
    """An expert tensor of this rank (a DTensor: an FSDP shard of its local experts) as the slice of the
    global [n_experts, ...] tensor it is, on the (replicate, ep, dp_mod_ep) mesh: checkpoints then hold
    every expert under one name and shape whatever the EP degree (no copy: the storage is shared)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    shape = torch.Size((local.shape[0] * global_mesh["ep"].size(), *local.shape[1:]))
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local.to_local(), global_mesh, [Replicate(), Shard(0), Shard(0)],
                              run_check=False, shape=shape, stride=stride)
