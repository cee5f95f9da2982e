"""The model's configuration: one typed tree, validated when loaded; `Transformer(config)` builds the model.

Every architectural choice lives here so that a YAML file in `configs/model/` describes a model fully,
and so that sizes (parameters, FLOPs) can be computed from the config alone, before any weight exists.
Cross-field checks raise errors that name the offending key, at load time rather than deep in a forward.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import ConfigModel

FP8_MULTIPLE = 16  # torch._scaled_mm needs both matmul dimensions divisible by 16


class RopeConfig(ConfigModel):
    """Rotary embeddings; `scaling` stretches a model trained at `original_max_position` to longer contexts."""

    theta: float = Field(10_000.0, gt=0)
    scaling: Literal["none", "linear", "yarn"] = "none"
    factor: float = Field(1.0, ge=1.0)
    original_max_position: int | None = Field(None, gt=0)
    beta_fast: float = Field(32.0, gt=0)  # YaRN: dims rotating more than this often are kept as trained
    beta_slow: float = Field(1.0, gt=0)  # YaRN: dims rotating less than this often are fully interpolated

    @model_validator(mode="after")
    def _check(self) -> RopeConfig:
        if self.scaling == "yarn" and self.original_max_position is None:
            raise ValueError("rope.original_max_position is required when rope.scaling is 'yarn'")
        if self.scaling == "none" and self.factor != 1.0:
            raise ValueError(f"rope.factor={self.factor} has no effect with rope.scaling 'none': set rope.scaling "
                             "to 'linear' or 'yarn', or leave rope.factor at 1")
        if self.scaling == "yarn" and self.beta_fast <= self.beta_slow:
            raise ValueError(f"rope.beta_fast={self.beta_fast} must exceed rope.beta_slow={self.beta_slow}")
        return self


class MoEConfig(ConfigModel):
    """Token-choice top-k experts; absent (`moe: null`) for a dense model."""

    n_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    expert_hidden: int = Field(gt=0)
    n_shared_experts: int = Field(0, ge=0)  # always-on experts every token passes through
    shared_expert_hidden: int | None = Field(None, gt=0)  # defaults to expert_hidden
    first_k_dense: int = Field(0, ge=0)  # the first layers keep a dense MLP (routing is unstable early)
    # Router scores: softmax over the experts (Qwen3-MoE, OLMoE) or a sigmoid per expert (DeepSeek-V3, torchtitan)
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    softmax_order: Literal["before_topk", "after_topk"] = "before_topk"
    normalize_weights: bool = False  # rescale the kept top-k probabilities to sum to one
    aux_loss_weight: float = Field(0.01, ge=0)
    z_loss_weight: float = Field(0.001, ge=0)
    bias_update_rate: float = Field(0.0, ge=0)  # >0: auxiliary-loss-free balancing (DeepSeek-V3)
    backend: Literal["grouped_mm", "loop", "megablocks"] = "grouped_mm"

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise ValueError(f"moe.top_k={self.top_k} must be <= moe.n_experts={self.n_experts}")
        if self.score_func == "sigmoid" and self.softmax_order != "before_topk":
            raise ValueError("moe.softmax_order=after_topk applies to softmax scoring only, not moe.score_func=sigmoid")
        if self.bias_update_rate > 0 and self.score_func == "softmax":
            # Refused here, not at export: every model atom trains can be released as a transformers model.
            raise ValueError("moe.bias_update_rate > 0 needs moe.score_func=sigmoid (DeepSeek-V3's and torchtitan's "
                             "balancing): no transformers architecture carries a selection bias on softmax scores, "
                             "so the trained model could not be released")
        return self

    @property
    def shared_hidden(self) -> int:
        return self.shared_expert_hidden or self.expert_hidden


class Float8Config(ConfigModel):
    """FP8 training of the linear layers through torchao; see `pretrain/model/fp8.py`."""

    recipe: Literal["tensorwise", "rowwise"] = "tensorwise"


class MoEModelConfig(ConfigModel):
    """A decoder-only transformer; MoE layers when `moe` is set, dense otherwise."""

    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0)  # None: as many as n_heads (no grouping)
    head_dim: int | None = Field(None, gt=0)  # None: d_model // n_heads
    mlp_hidden: int | None = Field(None, gt=0)  # SwiGLU hidden size of the dense MLPs (if any)
    rope: RopeConfig = RopeConfig()
    qk_norm: bool = True  # RMSNorm on each head's queries and keys (stabilises attention logits)
    tie_embeddings: bool = False
    norm_eps: float = Field(1e-6, gt=0)
    init_std: float = Field(0.02, gt=0)
    max_seq_len: int = Field(gt=0)
    moe: MoEConfig | None = None
    fp8: Float8Config | None = None

    @model_validator(mode="after")
    def _check(self) -> MoEModelConfig:
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim")
        if self.dim_per_head % 2:
            raise ValueError(f"head_dim={self.dim_per_head} must be even for rotary embeddings")
        if self.mlp_hidden is None and (self.moe is None or self.moe.first_k_dense > 0):
            raise ValueError("mlp_hidden is required: the model has dense MLP layers")
        if self.moe is not None and self.moe.first_k_dense > self.n_layers:
            raise ValueError(f"moe.first_k_dense={self.moe.first_k_dense} exceeds n_layers={self.n_layers}")
        if self.fp8 is not None:
            self._check_fp8_dims()
        return self

    def _check_fp8_dims(self) -> None:
        """FP8 matmuls need every converted linear's dimensions divisible by 16."""
        dims = {"d_model": self.d_model, "mlp_hidden": self.mlp_hidden or 0,
                "head_dim * n_heads": self.dim_per_head * self.n_heads,
                "head_dim * n_kv_heads": self.dim_per_head * self.kv_heads}
        if self.moe is not None and self.moe.n_shared_experts:
            dims["moe.shared_expert_hidden"] = self.moe.shared_hidden
        for name, value in dims.items():
            if value % FP8_MULTIPLE:
                raise ValueError(f"fp8: {name}={value} must be divisible by {FP8_MULTIPLE} for FP8 matmuls")

    # ---- derived sizes ------------------------------------------------------------------------

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_k_dense

    def _layer_params(self, layer: int, active: bool) -> int:
        d, hd = self.d_model, self.dim_per_head
        attn = d * hd * (2 * self.n_heads + 2 * self.kv_heads) + (2 * hd if self.qk_norm else 0)
        norms = 2 * d
        if not self.is_moe_layer(layer):
            assert self.mlp_hidden is not None
            return attn + norms + 3 * d * self.mlp_hidden
        moe = self.moe
        assert moe is not None
        experts = moe.top_k if active else moe.n_experts
        ffn = d * moe.n_experts + 3 * d * moe.expert_hidden * experts
        ffn += 3 * d * moe.shared_hidden * moe.n_shared_experts
        return attn + norms + ffn

    def num_params(self, active: bool = False) -> int:
        """Parameters in the model (`active`: those one token uses, i.e. only top_k of the experts)."""
        embed = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        layers = sum(self._layer_params(i, active) for i in range(self.n_layers))
        return embed + head + layers + self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 per active matmul weight, plus attention scores (PaLM's formula).

        Norm weights and the embedding lookup are no matmuls and are left out; the output head is one
        (tied or not). The
        attention term 12 * layers * heads * head_dim * seq_len counts the full (not causal-halved)
        score and value products, as nanoGPT, PaLM and torchtitan do, so MFU figures are comparable.
        """
        seq_len = seq_len or self.max_seq_len
        qk_norm_weights = 2 * self.dim_per_head if self.qk_norm else 0
        norm_weights = self.d_model + self.n_layers * (2 * self.d_model + qk_norm_weights)
        matmul_weights = self.num_params(active=True) - norm_weights - self.vocab_size * self.d_model
        if self.tie_embeddings:
            matmul_weights += self.vocab_size * self.d_model
        attention = 12 * self.n_layers * self.n_heads * self.dim_per_head * seq_len
        return 6 * matmul_weights + attention
