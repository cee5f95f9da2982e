"""Run under torchrun (gloo): one MoE layer with expert parallelism against the same layer on one rank.

Every rank builds the same full layer and routes its own tokens through it locally (the reference), then
through a copy that keeps only its experts and dispatches by all-to-all. Outputs and input gradients must
match the reference; each rank's expert gradients must equal the reference gradients summed over ranks.
Cases: balanced load; a skewed router (some experts receive nothing); a rank that sends no token.
Prints "EP OK <world>" on success (the test reads it). With ATOM_EP_DEVICE=cuda (a GPU machine) the
layers run on CUDA and the exchange over NCCL; one rank still runs the whole dispatch path.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

from pretrain.expert_parallel import ExpertParallel, local_slice, shard_experts
from pretrain.model.config import MoEConfig
from pretrain.model.moe import MoE

ATOL = 1e-5  # fp32: the same products, summed in another order
DEVICE = torch.device(os.environ.get("ATOM_EP_DEVICE", "cpu"))


def check(case: str, tokens: int, skew: bool) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = MoEConfig(n_experts=8, top_k=2, expert_hidden=16, aux_loss_weight=0.0, z_loss_weight=0.0)
    full = MoE(32, cfg).to(DEVICE)
    for p in full.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if skew:  # every token picks experts 0 and 1 first: the others receive nothing
        full.router.expert_bias[:2] = 100.0
    ep_layer = copy.deepcopy(full)
    ep = ExpertParallel(dist.group.WORLD, cfg.n_experts)
    shard_experts(ep_layer.experts, ep)
    ep_layer.dispatch = ep.run

    torch.manual_seed(100 + rank)
    x = torch.randn(tokens, 32, device=DEVICE)
    x_ref, x_ep = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = full(x_ref)[0]
    out_ep = ep_layer(x_ep)[0]
    torch.testing.assert_close(out_ep, out_ref, atol=ATOL, rtol=0, msg=lambda m: f"{case} output: {m}")
    weight = torch.randn_like(out_ref)
    (out_ref * weight).sum().backward()
    (out_ep * weight).sum().backward()
    torch.testing.assert_close(x_ep.grad, x_ref.grad, atol=ATOL, rtol=0, msg=lambda m: f"{case} dx: {m}")
    mine = local_slice(cfg.n_experts, world, rank)
    for name in ("gate_up_proj", "down_proj"):
        reference = getattr(full.experts, name).grad.clone()
        dist.all_reduce(reference)
        torch.testing.assert_close(getattr(ep_layer.experts, name).grad, reference[mine], atol=ATOL, rtol=0,
                                   msg=lambda m, n=name: f"{case} d{n}: {m}")
    # The dense router's gradient is local to each rank, as without EP.
    torch.testing.assert_close(ep_layer.router.gate.weight.grad, full.router.gate.weight.grad, atol=ATOL, rtol=0)

    # The counts exchange itself: what every rank receives is what the senders counted for its experts.
    counts = torch.tensor([[(r * 7 + g * 3) % 5 for g in range(cfg.n_experts)] for r in range(world)], device=DEVICE)
    received = ep.received_counts(counts[rank].clone())
    assert torch.equal(received, counts[:, mine]), (case, received, counts[:, mine])


def check_bias_is_the_same_everywhere() -> None:
    """Auxiliary-loss-free balancing under EP: each rank routes other tokens (other loads), yet after the
    update every rank holds the same selection bias, the one the summed load gives."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = MoEConfig(n_experts=8, top_k=2, expert_hidden=16, score_func="sigmoid", bias_update_rate=0.01)
    layer = MoE(32, cfg).to(DEVICE)
    ep = ExpertParallel(dist.group.WORLD, cfg.n_experts)
    shard_experts(layer.experts, ep)
    layer.dispatch = ep.run
    torch.manual_seed(200 + rank)
    counts = torch.bincount(layer.router(torch.randn(40, 32, device=DEVICE)).experts.flatten(), minlength=8)
    layer.train()
    torch.manual_seed(200 + rank)
    layer(torch.randn(40, 32, device=DEVICE))
    total = counts.float()
    dist.all_reduce(total)
    layer.update_expert_bias()
    biases = [torch.empty_like(layer.router.expert_bias) for _ in range(world)]
    dist.all_gather(biases, layer.router.expert_bias)
    assert all(torch.equal(b, biases[0]) for b in biases), biases
    assert torch.equal(biases[0], 0.01 * torch.sign(total.mean() - total)), (biases[0], total)


def main() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if DEVICE.type == "cuda" else "gloo")
    check("balanced", 24, skew=False)
    check("skewed", 24, skew=True)
    check("a rank sends nothing", 0 if dist.get_rank() == 1 else 24, skew=False)
    check_bias_is_the_same_everywhere()
    if dist.get_rank() == 0:
        print(f"EP OK {dist.get_world_size()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
