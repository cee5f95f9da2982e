"""Router, losses, dropless dispatch and the expert backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.model.config import MoEConfig
from pretrain.model.moe import MoE, load_balancing_loss, router_z_loss

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _moe(backend: str = "grouped_mm", d_model: int = 32, seed: int = 0, **kw: object) -> MoE:
    torch.manual_seed(seed)
    cfg = MoEConfig(**{"n_experts": 8, "top_k": 2, "expert_hidden": 48, "backend": backend, **kw})
    moe = MoE(d_model, cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(std=0.3)
    return moe


def _per_token_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its own top-k experts, one at a time: no sorting, no grouping, no capacity."""
    routing = moe.router(x)
    rows = []
    for t in range(x.shape[0]):
        row = torch.zeros(x.shape[1])
        for slot in range(moe.cfg.top_k):
            e = routing.experts[t, slot]
            gate, up = (moe.experts.gate_up_proj[e] @ x[t]).chunk(2)
            row = row + routing.weights[t, slot] * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
        rows.append(row)
    return torch.stack(rows)


def test_grouped_mm_equals_loop_forward_and_backward() -> None:
    x = torch.randn(3, 40, 32)
    results = {}
    for backend in ("grouped_mm", "loop"):
        moe = _moe(backend)
        xi = x.clone().requires_grad_()
        out, aux, z = moe(xi)
        # A non-uniform upstream gradient, and aux/z in the graph, so every path gets exercised.
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().add(aux + z).backward()
        results[backend] = (out, xi.grad, *(p.grad for p in moe.parameters()))
    for ours, ref in zip(results["grouped_mm"], results["loop"], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_dropless_every_token_reaches_its_experts() -> None:
    moe = _moe()
    x = torch.randn(50, 32)
    out, _, _ = moe(x)
    torch.testing.assert_close(out, _per_token_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_dropless_when_all_tokens_pick_the_same_experts() -> None:
    moe = _moe()
    with torch.no_grad():
        moe.router.expert_bias[3] = 100.0  # selection only: every token now picks experts 3 and 5
        moe.router.expert_bias[5] = 50.0
    x = torch.randn(64, 32)
    out, _, _ = moe(x)
    counts = moe.tokens_per_expert
    assert counts[3] == counts[5] == 64 and counts.sum() == 128
    torch.testing.assert_close(out, _per_token_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_shared_experts_add_a_dense_path() -> None:
    moe = _moe(n_shared_experts=1)
    x = torch.randn(10, 32)
    out, _, _ = moe(x)
    torch.testing.assert_close(out, _per_token_reference(moe, x) + moe.shared_experts(x), atol=1e-5, rtol=1e-5)


def test_aux_and_z_loss_by_hand() -> None:
    # 4 tokens, 2 experts, top-1. Rows [ln3, 0] have probabilities (3/4, 1/4).
    ln3 = math.log(3)
    logits = torch.tensor([[ln3, 0.0], [ln3, 0.0], [ln3, 0.0], [0.0, ln3]])
    experts = logits.topk(1).indices  # 0, 0, 0, 1
    # f = (3/4, 1/4) tokens routed; P = mean probabilities = (2.5/4, 1.5/4); loss = E * sum f * P
    expected_aux = 2 * (0.75 * 0.625 + 0.25 * 0.375)
    assert math.isclose(load_balancing_loss(logits, experts, 2).item(), expected_aux, rel_tol=1e-6)
    # logsumexp of every row is ln(3 + 1) = ln 4
    assert math.isclose(router_z_loss(logits).item(), math.log(4) ** 2, rel_tol=1e-6)
    balanced = torch.zeros(4, 2)
    assert math.isclose(load_balancing_loss(balanced, torch.tensor([[0], [1], [0], [1]]), 2).item(), 1.0)


def test_router_weight_modes() -> None:
    x = torch.randn(20, 32)
    before = _moe(softmax_order="before_topk").router(x)
    probs = before.logits.softmax(-1)
    torch.testing.assert_close(before.weights, probs.gather(-1, before.experts))
    normalized = _moe(softmax_order="before_topk", normalize_weights=True).router(x)
    after = _moe(softmax_order="after_topk").router(x)
    assert torch.equal(normalized.experts, after.experts)
    torch.testing.assert_close(normalized.weights, after.weights)  # the two renormalisations agree
    torch.testing.assert_close(after.weights.sum(-1), torch.ones(20))


def test_sigmoid_router_weights_are_the_chosen_scores() -> None:
    """DeepSeek-V3 scoring: sigmoid per expert, the bias picks the experts, the unbiased scores weigh them."""
    x = torch.randn(20, 32)
    moe = _moe(score_func="sigmoid")
    with torch.no_grad():
        moe.router.expert_bias.copy_(torch.linspace(-0.2, 0.2, 8))
    routing = moe.router(x)
    scores = routing.logits.sigmoid()
    assert torch.equal(routing.experts, (scores + moe.router.expert_bias).topk(2).indices)
    torch.testing.assert_close(routing.weights, scores.gather(-1, routing.experts))
    normalized = _moe(score_func="sigmoid", normalize_weights=True).router(x)
    torch.testing.assert_close(normalized.weights.sum(-1), torch.ones(20))
    # the balance loss sees the sigmoid scores normalised over experts: rows (3/4, 1/4) as in the softmax case
    ln3 = math.log(3)
    logits = torch.tensor([[ln3, -ln3], [ln3, -ln3], [ln3, -ln3], [-ln3, ln3]])
    expected_aux = 2 * (0.75 * 0.625 + 0.25 * 0.375)
    aux = load_balancing_loss(logits, logits.topk(1).indices, 2, "sigmoid")
    assert math.isclose(aux.item(), expected_aux, rel_tol=1e-6)
    with pytest.raises(ValueError, match="moe.softmax_order=after_topk"):
        MoEConfig(n_experts=8, top_k=2, expert_hidden=8, score_func="sigmoid", softmax_order="after_topk")


def test_bias_balancing_needs_sigmoid_scores_that_can_be_released() -> None:
    with pytest.raises(ValueError, match="moe.bias_update_rate > 0 needs moe.score_func=sigmoid"):
        MoEConfig(n_experts=8, top_k=2, expert_hidden=8, bias_update_rate=0.01)


def test_bias_balancing_moves_load_toward_uniform() -> None:
    moe = _moe(bias_update_rate=0.01, score_func="sigmoid").train()
    torch.manual_seed(1)
    skew = torch.randn(32)
    with torch.no_grad():
        moe.router.gate.weight[0] += 0.1 * skew  # inputs share a direction: routing starts lopsided

    def window_imbalance(steps: int) -> float:
        """max/mean expert load over `steps` training steps of fresh batches, updating the bias."""
        moe.reset_load()
        for _ in range(steps):
            with torch.no_grad():
                moe(torch.randn(256, 32) + skew)
            moe.update_expert_bias()
        load = moe.tokens_per_expert
        return (load.max() / load.mean()).item()

    start = window_imbalance(1)
    window_imbalance(60)
    end = window_imbalance(20)
    assert start > 2.5
    assert end < 1.3
    assert moe.router.expert_bias[7] < 0  # the most overloaded expert was pushed down


def test_bias_does_not_change_weights_of_chosen_experts() -> None:
    moe = _moe()
    x = torch.randn(16, 32)
    plain = moe.router(x)
    with torch.no_grad():
        moe.router.expert_bias.copy_(torch.linspace(0, 0.01, 8))
    biased = moe.router(x)
    same = (plain.experts == biased.experts).all(-1)
    torch.testing.assert_close(plain.weights[same], biased.weights[same])


@pytest.mark.gpu
@requires_cuda
def test_grouped_mm_equals_loop_on_cuda_bf16() -> None:
    x = torch.randn(4, 256, 256, device="cuda", dtype=torch.bfloat16)
    outs = {}
    for backend in ("grouped_mm", "loop"):
        moe = _moe(backend, d_model=256, expert_hidden=512).cuda().to(torch.bfloat16)
        xi = x.clone().requires_grad_()
        out, _, _ = moe(xi)
        out.float().pow(2).mean().backward()
        outs[backend] = (out, xi.grad, moe.experts.gate_up_proj.grad, moe.router.gate.weight.grad)
    for ours, ref in zip(outs["grouped_mm"], outs["loop"], strict=True):
        torch.testing.assert_close(ours.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@requires_cuda
def test_megablocks_backend_equals_loop_on_cuda() -> None:
    pytest.importorskip("megablocks")
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    outs = [_moe(b, d_model=256, expert_hidden=512).cuda().to(torch.bfloat16)(x)[0] for b in ("megablocks", "loop")]
    torch.testing.assert_close(outs[0].float(), outs[1].float(), atol=2e-2, rtol=2e-2)
