"""Mixture-of-Experts feed-forward: a token-choice top-k router and dropless experts.

Dropless means no capacity factor: tokens are sorted by expert and each expert multiplies however
many rows it received, through one grouped GEMM (`torch._grouped_mm`) over variable-sized groups.
Scores are a softmax over the experts or a sigmoid per expert. Load balance comes from an auxiliary
loss, optionally from a per-expert selection bias updated from observed load (auxiliary-loss-free
balancing, DeepSeek-V3), and the router z-loss keeps logits small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.config import ConfigError
from pretrain.model.config import MoEConfig
from pretrain.model.layers import SwiGLU


@dataclass
class Routing:
    """Each token's top-k experts and their mixing weights, plus the raw logits for the losses."""

    experts: torch.Tensor  # [tokens, top_k] int64
    weights: torch.Tensor  # [tokens, top_k], in the input dtype
    logits: torch.Tensor  # [tokens, n_experts] fp32


class Router(nn.Module):
    """Token-choice top-k gate.

    With softmax scoring, `softmax_order` picks between softmax over all experts then top-k (weights are
    probabilities, optionally renormalised over the kept k) and top-k on logits then softmax over the k
    (weights always sum to one). With sigmoid scoring (DeepSeek-V3) each expert's score is sigmoid(logit),
    independent of the others; the kept scores are the weights, optionally renormalised over the k.
    The `expert_bias` buffer shifts only which experts are *selected*, never the weights: that is what
    lets it balance load without distorting the output (DeepSeek-V3).
    """

    expert_bias: torch.Tensor

    def __init__(self, d_model: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(d_model, cfg.n_experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts))

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x).float()
        if self.cfg.score_func == "softmax" and self.cfg.softmax_order == "after_topk":
            experts = torch.topk(logits + self.expert_bias, self.cfg.top_k, dim=-1).indices
            weights = logits.gather(-1, experts).softmax(dim=-1)
        else:
            scores = logits.softmax(dim=-1) if self.cfg.score_func == "softmax" else logits.sigmoid()
            experts = torch.topk(scores + self.expert_bias, self.cfg.top_k, dim=-1).indices
            weights = scores.gather(-1, experts)
            if self.cfg.normalize_weights:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(experts, weights.to(x.dtype), logits)


def load_balancing_loss(logits: torch.Tensor, experts: torch.Tensor, n_experts: int,
                        score_func: str = "softmax") -> torch.Tensor:
    """Switch-Transformer auxiliary loss: n_experts * sum_e f_e * P_e, which is 1 when balanced.

    f_e is the fraction of routed (token, slot) pairs that went to expert e (not differentiable),
    P_e the mean router probability of e (differentiable): the gradient lowers the probability of
    experts that receive more than their share. Sigmoid scores are normalised over the experts into
    probabilities first (DeepSeek-V3's balance loss).
    """
    fraction = torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.numel()
    if score_func == "softmax":
        probs = logits.softmax(dim=-1)
    else:
        scores = logits.sigmoid()
        probs = scores / scores.sum(dim=-1, keepdim=True)
    return n_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)^2) (ST-MoE): penalises large router logits, which destabilise bf16."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# Expert computation on expert-sorted tokens
# ---------------------------------------------------------------------------------------------


def _megablocks_gmm() -> Callable[..., torch.Tensor] | None:
    """megablocks' grouped GEMM (the kernel its dMoE runs experts on), if it imports here."""
    try:
        from megablocks import grouped_gemm_util
    except ImportError:
        return None
    return grouped_gemm_util.gmm if grouped_gemm_util.grouped_gemm_is_available() else None


class Experts(nn.Module):
    """n_experts SwiGLU MLPs stored as stacked weights in nn.Linear layout ([expert, out, in]).

    `gate_up_proj` fuses the gate and up projections so the first grouped GEMM is a single call.
    Input rows must be sorted by expert; `counts[e]` rows belong to expert e.
    """

    def __init__(self, n_experts: int, d_model: int, hidden: int, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self._gmm = _megablocks_gmm() if backend == "megablocks" else None
        if backend == "megablocks" and self._gmm is None:
            raise ConfigError("moe.backend: 'megablocks' was requested but megablocks (with grouped_gemm) "
                              "does not import here; use 'grouped_mm'")

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gate, up = self._matmul(x, self.gate_up_proj, counts).chunk(2, dim=-1)
        return self._matmul(F.silu(gate) * up, self.down_proj, counts)

    # Left out of torch.compile graphs: the grouped GEMM is one kernel already, and its fake-tensor rule
    # accepts only bf16, so tracing it in fp32 (CPU training) fails.
    @torch.compiler.disable
    def _matmul(self, x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Row block e of x times w[e].T, for every expert e."""
        if self.backend == "grouped_mm":
            offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)  # end row of each group
            return torch._grouped_mm(x, w.transpose(-2, -1), offs=offsets)
        if self._gmm is not None:  # backend megablocks
            return self._gmm(x, w, counts.cpu(), trans_b=True)
        blocks = x.split(counts.tolist())  # "loop": the readable reference the tests compare against
        return torch.cat([block @ w[e].T for e, block in enumerate(blocks)])


class MoE(nn.Module):
    """Router + dropless experts (+ optional always-on shared experts) replacing a layer's MLP.

    Buffers, not parameters, carry load, counted in training mode only: `tokens_per_expert` accumulates
    for logging until `reset_load()`; `pending_load` accumulates between two `update_expert_bias()` calls.
    """

    tokens_per_expert: torch.Tensor
    pending_load: torch.Tensor
    tokens_received: torch.Tensor

    def __init__(self, d_model: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = Router(d_model, cfg)
        self.experts = Experts(cfg.n_experts, d_model, cfg.expert_hidden, cfg.backend)
        self.shared_experts = (SwiGLU(d_model, cfg.shared_hidden * cfg.n_shared_experts)
                               if cfg.n_shared_experts else None)
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_experts), persistent=False)
        self.register_buffer("pending_load", torch.zeros(cfg.n_experts), persistent=False)
        # Expert parallelism (pretrain/expert_parallel.py) sets this: (experts, rows, counts) -> (outputs,
        # rows this rank's experts received), with the experts on other ranks. None: all experts are here.
        self.dispatch: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]] | None = None
        self.register_buffer("tokens_received", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the layer output and its (unweighted) load-balancing and z losses."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        routing = self.router(x)
        counts = torch.bincount(routing.experts.flatten(), minlength=self.cfg.n_experts)
        self._record_load(counts)

        # Dispatch: sort the tokens * top_k (token, expert) pairs by expert, run each expert on its rows,
        # then put the rows back in (token, slot) order and mix each token's k outputs by weight.
        order = routing.experts.flatten().argsort(stable=True)
        rows = x[order // self.cfg.top_k]
        if self.dispatch is None:
            expert_out = self.experts(rows, counts)
        else:
            expert_out, received = self.dispatch(self.experts, rows, counts)
            if self.training:
                self.tokens_received += received
        unsorted = torch.empty_like(expert_out).index_copy_(0, order, expert_out)
        out = torch.einsum("tk,tkd->td", routing.weights, unsorted.view(x.shape[0], self.cfg.top_k, shape[-1]))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)

        aux = load_balancing_loss(routing.logits, routing.experts, self.cfg.n_experts, self.cfg.score_func)
        return out.view(shape), aux, router_z_loss(routing.logits)

    @torch.no_grad()
    def _record_load(self, counts: torch.Tensor) -> None:
        """Training forwards only: an evaluation between two logging steps must not show in the load they
        log (nor in the bias update), or a run's records would depend on when it was evaluated."""
        if not self.training:
            return
        self.tokens_per_expert += counts
        if self.cfg.bias_update_rate > 0:
            self.pending_load += counts

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """Nudge each expert's selection bias by +-rate toward the mean load (call after optimizer.step).

        Loads are summed over data-parallel ranks first so every rank keeps the same bias.
        """
        if self.cfg.bias_update_rate == 0:
            return
        load = self.pending_load
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        self.router.expert_bias += self.cfg.bias_update_rate * torch.sign(load.mean() - load)
        load.zero_()

    def reset_load(self) -> None:
        self.tokens_per_expert.zero_()
        self.tokens_received.zero_()
