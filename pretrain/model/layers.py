"""The dense building blocks: RMSNorm, rotary position embeddings (with context scaling), attention, SwiGLU.

Conventions follow Llama/Qwen so that weights map one-to-one onto `transformers` (see hf_export.py):
rotary embeddings rotate the two halves of each head ("rotate_half"), norms compute in fp32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.config import MoEModelConfig, RopeConfig

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

AttentionMask: TypeAlias = "torch.Tensor | BlockMask"  # a boolean SDPA mask (CPU) or a flex BlockMask (CUDA)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 whatever the input dtype (bf16 squares overflow precision)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------------


def rope_frequencies(head_dim: int, rope: RopeConfig) -> tuple[torch.Tensor, float]:
    """Angular frequency of each of the head_dim/2 rotated pairs, and the factor applied to cos/sin.

    - none:   w_i = theta^(-2i/d).
    - linear: positions squeezed by `factor` (w_i / factor): every pair is interpolated.
    - yarn:   pairs that turn many times within the original context (high frequency, local
      information) are kept; pairs that turn less than once are interpolated by `factor`; a linear
      ramp over pair index blends the two between `beta_fast` and `beta_slow` rotations. Attention
      logits are sharpened by (0.1 ln(factor) + 1)^2, applied as that factor on both cos and sin.
      The ramp bounds are rounded outward as in the reference implementation (and transformers).
    """
    pair = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    base = 1.0 / rope.theta ** pair
    if rope.scaling == "none" or rope.factor == 1.0:
        return base.float(), 1.0
    if rope.scaling == "linear":
        return (base / rope.factor).float(), 1.0

    assert rope.original_max_position is not None
    original = rope.original_max_position

    def pair_index_at(rotations: float) -> float:
        """The (fractional) pair index that turns `rotations` times over the original context."""
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low = max(math.floor(pair_index_at(rope.beta_fast)), 0)
    high: float = min(math.ceil(pair_index_at(rope.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    freqs = base * (1 - ramp) + (base / rope.factor) * ramp  # ramp 0: kept, ramp 1: interpolated
    return freqs.float(), 0.1 * math.log(rope.factor) + 1.0


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_seq_len-1 (recomputed if a longer input arrives)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, rope: RopeConfig, max_seq_len: int) -> None:
        super().__init__()
        self.head_dim, self.rope = head_dim, rope
        self._build(max_seq_len)

    def _build(self, seq_len: int, device: torch.device | None = None) -> None:
        freqs, scale = rope_frequencies(self.head_dim, self.rope)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), freqs.to(device))
        angles = torch.cat([angles, angles], dim=-1)  # [seq, head_dim]: both halves share a frequency
        self.register_buffer("cos", angles.cos() * scale, persistent=False)
        self.register_buffer("sin", angles.sin() * scale, persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.cos.shape[0]:
            self._build(seq_len, self.cos.device)
        return self.cos[:seq_len], self.sin[:seq_len]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+d/2}) pair of x [batch, heads, seq, head_dim] by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [batch, 1, seq, seq] mask: query i sees key j iff j <= i and both are in the same document."""
    seq = doc_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & causal)[:, None]


def document_mask(doc_ids: torch.Tensor) -> AttentionMask:
    """The mask for packed documents, built once per forward and shared by every layer.

    On CUDA a flex_attention BlockMask, which skips fully masked blocks instead of materialising
    seq x seq booleans; on CPU (no flex backward there) the explicit mask for SDPA.
    """
    if not doc_ids.is_cuda:
        return document_causal_mask(doc_ids)
    from torch.nn.attention.flex_attention import create_block_mask

    def same_doc_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (k <= q) & (doc_ids[b, q] == doc_ids[b, k])

    batch, seq = doc_ids.shape
    return create_block_mask(same_doc_causal, batch, None, seq, seq, device=doc_ids.device)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """flex_attention is only fast compiled; compile it once, on first use."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class Attention(nn.Module):
    """Causal multi-head attention with grouped KV heads (GQA), optional per-head QK RMSNorm and RoPE."""

    def __init__(self, cfg: MoEModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: AttentionMask | None = None) -> torch.Tensor:
        """`mask` from `document_mask` keeps attention inside documents; None is plain causal."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, seq, head_dim]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            out = _compiled_flex_attention()(q, k, v, block_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    """The gated MLP of Llama/OLMo: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
