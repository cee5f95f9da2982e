"""The decoder-only transformer: embedding, pre-norm blocks (attention + dense MLP or MoE), norm, head.

forward(tokens, doc_ids) returns logits and the MoE losses already weighted by the config;
forward(tokens, doc_ids, targets) returns the mean cross-entropy (or, with loss_reduction="none", each
target's) instead of the logits, computed by the fused head + loss of loss.py, so a training step is
`out = model(x, targets=y); (out.loss + out.aux_loss + out.z_loss).backward()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from pretrain.model.config import MoEModelConfig
from pretrain.model.layers import Attention, AttentionMask, RMSNorm, RotaryEmbedding, SwiGLU, document_mask
from pretrain.model.loss import linear_cross_entropy
from pretrain.model.moe import MoE


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [batch, seq, vocab]; None when targets were given
    aux_loss: torch.Tensor  # load-balancing loss, mean over MoE layers, times moe.aux_loss_weight
    z_loss: torch.Tensor  # router z-loss, mean over MoE layers, times moe.z_loss_weight
    loss: torch.Tensor | None = None  # cross-entropy against the targets (mean, or [batch * seq]), when given


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)) where the MLP is dense or a mixture of experts."""

    def __init__(self, cfg: MoEModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.is_moe_layer(layer):
            assert cfg.moe is not None
            self.mlp: nn.Module = MoE(cfg.d_model, cfg.moe)
        else:
            assert cfg.mlp_hidden is not None
            self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: AttentionMask | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        if isinstance(self.mlp, MoE):
            out, aux, z = self.mlp(self.mlp_norm(x))
            return x + out, aux, z
        return x + self.mlp(self.mlp_norm(x)), None, None


class OutputHead(nn.Linear):
    """The vocabulary projection; given targets, it returns their cross-entropy through the fused loss
    instead of logits (inside its own forward, so sharding hooks gather its weight as for any module)."""

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        if targets is None:
            return super().forward(x)
        return linear_cross_entropy(x, self.weight, targets, reduction)


class Transformer(nn.Module):
    def __init__(self, cfg: MoEModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.dim_per_head, cfg.rope, cfg.max_seq_len)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = OutputHead(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.expert_layout: Any = None  # set by pretrain.parallel under expert parallelism (its ExpertLayout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere; residual-branch outputs scaled by 1/sqrt(2 n_layers) (GPT-2),
        so the residual stream's variance does not grow with depth. Norm weights start at one."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor, *, doc_ids: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, loss_reduction: Literal["mean", "none"] = "mean") -> ModelOutput:
        """tokens [batch, seq]; doc_ids [batch, seq] (optional) keeps attention inside each document;
        targets [batch, seq] (optional): return their cross-entropy (`loss_reduction`) and no logits."""
        x = self.embed(tokens)
        cos, sin = self.rope(tokens.shape[1])
        mask = document_mask(doc_ids) if doc_ids is not None else None
        aux_losses, z_losses = [], []
        for block in self.layers:
            x, aux, z = block(x, cos, sin, mask)
            if aux is not None:
                aux_losses.append(aux)
                z_losses.append(z)
        x = self.norm(x)
        logits, loss = ((self.lm_head(x), None) if targets is None
                        else (None, self.lm_head(x, targets, loss_reduction)))
        zero = x.new_zeros((), dtype=torch.float32)
        moe = self.cfg.moe
        if moe is None or not aux_losses:
            return ModelOutput(logits, zero, zero, loss)
        aux_loss = moe.aux_loss_weight * torch.stack(aux_losses).mean() if moe.aux_loss_weight else zero
        z_loss = moe.z_loss_weight * torch.stack(z_losses).mean() if moe.z_loss_weight else zero
        return ModelOutput(logits, aux_loss, z_loss, loss)

    # ---- MoE bookkeeping for the trainer -------------------------------------------------------

    def moe_layers(self) -> dict[int, MoE]:
        return {i: block.mlp for i, block in enumerate(self.layers) if isinstance(block.mlp, MoE)}

    def update_expert_bias(self) -> None:
        """Auxiliary-loss-free balancing step; call once per optimizer step (no-op when disabled)."""
        for moe in self.moe_layers().values():
            moe.update_expert_bias()

    def _counts_over_ranks(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per MoE layer, over all ranks: tokens per expert and pending load (summed), and the rows each rank's
        experts received under expert parallelism ([world size]); one collective of each kind."""
        layers = self.moe_layers()
        if not layers:
            return {}
        load = torch.stack([torch.stack([m.tokens_per_expert, m.pending_load]) for m in layers.values()])
        received = torch.stack([m.tokens_received for m in layers.values()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(load)  # a stacked copy: the buffers themselves stay per rank
            gathered = [torch.empty_like(received) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, received)
            per_rank = torch.stack(gathered, dim=1)
        else:
            per_rank = received[:, None]
        return {i: (load[j, 0], load[j, 1], per_rank[j]) for j, i in enumerate(layers)}

    def load_counters(self) -> dict[str, dict[str, list[float]]]:
        """Each MoE layer's counters not yet consumed (the load `expert_load` has yet to report, the load the
        next bias update has yet to use), summed over ranks: checkpointed, so a run resumed between two
        logging steps logs the same load as an uninterrupted one. Call on every rank (collective)."""
        return {str(i): {"tokens_per_expert": load.tolist(), "pending_load": pending.tolist(),
                         "tokens_received": received.tolist()}
                for i, (load, pending, received) in self._counts_over_ranks().items()}

    def restore_load_counters(self, counters: dict[str, dict[str, list[float]]]) -> None:
        """The sums go to rank 0 (the others start from zero), so the next sum over ranks equals the saved one;
        each rank takes back its own received-row count."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        for i, moe in self.moe_layers().items():
            saved = counters.get(str(i), {})
            for name in ("tokens_per_expert", "pending_load"):
                if name in saved:
                    getattr(moe, name).copy_(torch.tensor(saved[name]) if rank == 0 else 0)
            received = saved.get("tokens_received", [])
            moe.tokens_received.fill_(received[rank] if rank < len(received) else 0)

    def expert_load(self, reset: bool = True) -> dict[str, float]:
        """Per-layer, per-expert share of the tokens routed on all ranks since the last reset, plus max/mean
        imbalance (1.0 is perfect balance), and under expert parallelism the rows each rank's experts received;
        as flat names ready for a metrics logger. Call on every rank (collective)."""
        stats: dict[str, float] = {}
        layers = self.moe_layers()
        for i, (counts, _, received) in self._counts_over_ranks().items():
            moe = layers[i]
            if reset:
                moe.reset_load()
            total = counts.sum().item()
            if total == 0:
                continue
            share = (counts / total).tolist()
            stats[f"moe/layer{i}/imbalance"] = max(share) * len(share)
            stats.update({f"moe/layer{i}/expert{e}": s for e, s in enumerate(share)})
            if moe.dispatch is not None:
                stats.update({f"moe/layer{i}/received_rank{r}": v for r, v in enumerate(received.tolist())})
        return stats
