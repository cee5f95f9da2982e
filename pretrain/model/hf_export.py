"""Export to, and import from, Hugging Face format: Qwen3MoeForCausalLM for softmax routing,
Dots1ForCausalLM for sigmoid routing (with or without a selection bias), Qwen3ForCausalLM if dense.

Why Qwen3-MoE: of the MoE architectures `transformers` ships, it maps our softmax router most directly:
per-head QK RMSNorm, a free head_dim, GQA, softmax-then-top-k routing with optional renormalisation,
dense layers before the MoE ones (`mlp_only_layers` with their own `intermediate_size`), YaRN and
linear RoPE scaling, tied or untied head. (OLMoE normalises q/k over all heads together and has no
dense layers.) It has neither shared experts nor a selection bias.

Why Dots1 for sigmoid routing: it is Qwen3's attention (per-head QK norm, GQA) with DeepSeek-V3's
router: sigmoid scores, `e_score_correction_bias` added for selection only, optional renormalisation
(group-limited routing off with n_group=topk_group=1, routed_scaling_factor=1), shared experts and
`first_k_dense_replace` dense layers. So the auxiliary-loss-free balancing of DeepSeek-V3 and torchtitan
(sigmoid scores + a moving bias) is released exactly. No architecture in transformers combines softmax
scores, a selection bias and per-head QK norm (ERNIE-4.5-MoE has the first two but no QK norm), so a
softmax router whose bias moved is refused; what else cannot be expressed is refused with an error
naming the config key.

Checkpoints are written with one tensor per expert (`mlp.experts.{e}.gate_proj.weight`), the layout
of the published Qwen3-MoE and dots.llm1 checkpoints that transformers, vLLM and SGLang all read.
Our full config travels in config.json under `atom_config`, so an import restores training-only
settings (loss weights, backend) too; a checkpoint without it is mapped from the HF fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.config import ConfigError
from pretrain.model.config import MoEConfig, MoEModelConfig, RopeConfig
from pretrain.model.transformer import Transformer

ATOM_KEY = "atom_config"
WEIGHTS_FILE = "model.safetensors"


def uses_dots1(cfg: MoEModelConfig) -> bool:
    """Sigmoid-scored MoE models export as Dots1ForCausalLM, softmax-scored ones as Qwen3MoeForCausalLM."""
    return cfg.moe is not None and cfg.moe.score_func == "sigmoid"


def check_exportable(model: Transformer) -> None:
    """Raise ConfigError naming the first setting the target architecture cannot represent."""
    cfg, moe = model.cfg, model.cfg.moe
    if not cfg.qk_norm:
        raise ConfigError("qk_norm=false: Qwen3 and Dots1 always apply per-head QK RMSNorm; cannot export faithfully")
    if moe is None:
        return
    if moe.score_func == "sigmoid":
        if moe.n_shared_experts and moe.shared_hidden != moe.expert_hidden:
            raise ConfigError(f"moe.shared_expert_hidden={moe.shared_hidden}: Dots1ForCausalLM sizes shared experts "
                              f"as moe.expert_hidden={moe.expert_hidden}; cannot export faithfully")
        return
    if moe.n_shared_experts:
        raise ConfigError(f"moe.n_shared_experts={moe.n_shared_experts}: Qwen3MoeForCausalLM has no shared experts "
                          "(Dots1ForCausalLM has, for moe.score_func=sigmoid); cannot export faithfully")
    for i, layer in model.moe_layers().items():
        if layer.router.expert_bias.abs().max() > 0:
            raise ConfigError(f"moe.bias_update_rate: layer {i} has a non-zero expert selection bias under "
                              "moe.score_func=softmax; no transformers architecture has softmax scores, a selection "
                              "bias and per-head QK norm (train with moe.score_func=sigmoid: exported as Dots1)")


def hf_config(cfg: MoEModelConfig) -> dict[str, Any]:
    """The config.json fields of the Qwen3 / Qwen3-MoE / Dots1 equivalent of `cfg`."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope.theta}
    if cfg.rope.scaling == "linear":
        rope.update(rope_type="linear", factor=cfg.rope.factor)
    elif cfg.rope.scaling == "yarn":
        rope.update(rope_type="yarn", factor=cfg.rope.factor, beta_fast=cfg.rope.beta_fast,
                    beta_slow=cfg.rope.beta_slow, original_max_position_embeddings=cfg.rope.original_max_position)
    out: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head,
        "intermediate_size": cfg.mlp_hidden or 0, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len, "rope_parameters": rope, "attention_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
    }
    if cfg.moe is None:
        return {**out, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}
    moe = cfg.moe
    if uses_dots1(cfg):
        return {
            **out, "model_type": "dots1", "architectures": ["Dots1ForCausalLM"],
            "n_routed_experts": moe.n_experts, "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": moe.expert_hidden, "n_shared_experts": moe.n_shared_experts,
            "first_k_dense_replace": moe.first_k_dense, "norm_topk_prob": moe.normalize_weights,
            # one expert group holding all experts: DeepSeek-V3's group-limited routing off, weights unscaled
            "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0,
            "sliding_window": None, "layer_types": ["full_attention"] * cfg.n_layers,
        }
    return {
        **out, "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
        "num_experts": moe.n_experts, "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.expert_hidden, "decoder_sparse_step": 1,
        "mlp_only_layers": list(range(moe.first_k_dense)), "router_aux_loss_coef": moe.aux_loss_weight,
        # top-k then softmax over the k equals softmax then top-k renormalised over the k
        "norm_topk_prob": moe.normalize_weights or moe.softmax_order == "after_topk",
    }


def _hf_key_pairs(cfg: MoEModelConfig) -> list[tuple[str, str]]:
    """(our name, HF name) for every tensor except the stacked experts."""
    pairs = [("embed.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    shared = cfg.moe.n_shared_experts if cfg.moe is not None else 0
    for i in range(cfg.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        pairs += [(ours + "attn_norm.weight", hf + "input_layernorm.weight"),
                  (ours + "mlp_norm.weight", hf + "post_attention_layernorm.weight")]
        pairs += [(f"{ours}attn.{p}.weight", f"{hf}self_attn.{p}.weight")
                  for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
        mlp = ("gate_proj", "up_proj", "down_proj")
        if not cfg.is_moe_layer(i):
            pairs += [(f"{ours}mlp.{p}.weight", f"{hf}mlp.{p}.weight") for p in mlp]
            continue
        pairs.append((ours + "mlp.router.gate.weight", hf + "mlp.gate.weight"))
        if uses_dots1(cfg):
            pairs.append((ours + "mlp.router.expert_bias", hf + "mlp.gate.e_score_correction_bias"))
        if shared:
            pairs += [(f"{ours}mlp.shared_experts.{p}.weight", f"{hf}mlp.shared_experts.{p}.weight") for p in mlp]
    return pairs


def export_hf(model: Transformer, out_dir: str | Path) -> Path:
    """Write config.json and model.safetensors (fp32 as trained) that transformers loads directly."""
    check_exportable(model)
    cfg, out_dir = model.cfg, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = model.state_dict()
    tensors = {hf: ours[name] for name, hf in _hf_key_pairs(cfg)}
    for i, moe in model.moe_layers().items():
        gate, up = moe.experts.gate_up_proj.detach().chunk(2, dim=1)
        for e in range(moe.cfg.n_experts):
            prefix = f"model.layers.{i}.mlp.experts.{e}."
            tensors |= {prefix + "gate_proj.weight": gate[e], prefix + "up_proj.weight": up[e],
                        prefix + "down_proj.weight": moe.experts.down_proj.detach()[e]}
        if uses_dots1(cfg) and not moe.cfg.n_shared_experts:  # Dots1 always builds them: zero-width, adding 0
            prefix, empty = f"model.layers.{i}.mlp.shared_experts.", gate.new_zeros(0, cfg.d_model)
            tensors |= {prefix + "gate_proj.weight": empty, prefix + "up_proj.weight": empty,
                        prefix + "down_proj.weight": empty.T}
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, out_dir / WEIGHTS_FILE,
              metadata={"format": "pt"})
    config = {**hf_config(cfg), "dtype": str(ours["embed.weight"].dtype).removeprefix("torch."),
              ATOM_KEY: cfg.to_dict()}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def config_from_hf(hf: dict[str, Any]) -> MoEModelConfig:
    """Our config for a Qwen3 / Qwen3-MoE / Dots1 config.json (ours verbatim when it carries `atom_config`)."""
    if ATOM_KEY in hf:
        return MoEModelConfig.model_validate(hf[ATOM_KEY])
    if hf.get("attention_bias") or hf.get("use_sliding_window") or hf.get("decoder_sparse_step", 1) != 1:
        raise ConfigError("config.json: attention_bias, sliding windows and decoder_sparse_step != 1 "
                          "have no equivalent in our model")
    rope_hf = hf.get("rope_parameters") or {"rope_theta": hf.get("rope_theta", 10_000.0)}
    kind = rope_hf.get("rope_type", "default")
    if kind not in ("default", "linear", "yarn"):
        raise ConfigError(f"config.json: rope_type {kind!r} is not supported (default, linear, yarn)")
    rope = RopeConfig(theta=rope_hf["rope_theta"], scaling="none" if kind == "default" else kind,
                      factor=rope_hf.get("factor", 1.0),
                      original_max_position=rope_hf.get("original_max_position_embeddings"),
                      beta_fast=rope_hf.get("beta_fast") or 32.0, beta_slow=rope_hf.get("beta_slow") or 1.0)
    moe = None
    if hf.get("model_type") == "dots1":
        moe = _dots1_moe(hf)
    elif n_experts := hf.get("num_experts") or hf.get("num_local_experts") or 0:
        dense = hf.get("mlp_only_layers") or []
        if dense != list(range(len(dense))):
            raise ConfigError(f"config.json: mlp_only_layers={dense} must be the first layers")
        moe = MoEConfig(n_experts=n_experts, top_k=hf["num_experts_per_tok"], expert_hidden=hf["moe_intermediate_size"],
                        first_k_dense=len(dense), normalize_weights=hf.get("norm_topk_prob", False),
                        aux_loss_weight=hf.get("router_aux_loss_coef", 0.0))
    return MoEModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf["num_key_value_heads"], head_dim=hf.get("head_dim"),
        mlp_hidden=hf["intermediate_size"] or None, rope=rope, qk_norm=True,
        tie_embeddings=hf.get("tie_word_embeddings", False), norm_eps=hf["rms_norm_eps"],
        init_std=hf.get("initializer_range", 0.02), max_seq_len=hf["max_position_embeddings"], moe=moe)


def _dots1_moe(hf: dict[str, Any]) -> MoEConfig:
    """Our sigmoid-scored MoE for a Dots1 config.json; group-limited routing and scaled weights are refused."""
    if hf.get("topk_group", 1) != hf.get("n_group", 1) or hf.get("routed_scaling_factor", 1.0) != 1.0:
        raise ConfigError(f"config.json: n_group={hf.get('n_group')}, topk_group={hf.get('topk_group')}, "
                          f"routed_scaling_factor={hf.get('routed_scaling_factor')}: group-limited routing and "
                          "scaled expert weights have no equivalent in our model")
    if "sliding_attention" in (hf.get("layer_types") or []):
        raise ConfigError("config.json: layer_types has sliding_attention layers; our model has no sliding windows")
    return MoEConfig(n_experts=hf["n_routed_experts"], top_k=hf["num_experts_per_tok"],
                     expert_hidden=hf["moe_intermediate_size"], n_shared_experts=hf.get("n_shared_experts") or 0,
                     first_k_dense=hf.get("first_k_dense_replace", 0), score_func="sigmoid",
                     normalize_weights=hf.get("norm_topk_prob", False))


def import_hf(path: str | Path) -> Transformer:
    """Our model (fp32) from a directory written by `export_hf` or by transformers' save_pretrained."""
    path = Path(path)
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    hf: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        hf |= load_file(shard)
    state = {name: hf[hf_name] for name, hf_name in _hf_key_pairs(cfg)}
    for i in range(cfg.n_layers):
        if not cfg.is_moe_layer(i):
            continue
        assert cfg.moe is not None
        prefix = f"model.layers.{i}.mlp.experts."
        experts = range(cfg.moe.n_experts)
        state[f"layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([hf[f"{prefix}{e}.gate_proj.weight"], hf[f"{prefix}{e}.up_proj.weight"]]) for e in experts])
        state[f"layers.{i}.mlp.experts.down_proj"] = torch.stack([hf[f"{prefix}{e}.down_proj.weight"] for e in experts])
        if not uses_dots1(cfg):
            state[f"layers.{i}.mlp.router.expert_bias"] = torch.zeros(cfg.moe.n_experts)  # exported only when zero
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model = Transformer(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: checkpoint does not match its config: {exc}") from None
    return model
