"""Hugging Face export: transformers' Qwen3-MoE / Dots1 / Qwen3 loaded from our export gives our logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, load_config
from pretrain.model.config import MoEModelConfig
from pretrain.model.hf_export import ATOM_KEY, export_hf, import_hf
from pretrain.model.transformer import Transformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def _model(name: str, *overrides: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = load_config(MoEModelConfig, CONFIGS / f"{name}.yaml", ("vocab_size=1024", *overrides))
    model = Transformer(cfg).eval()
    with torch.no_grad():  # norms away from one, so a mis-mapped norm weight cannot hide
        for name_, p in model.named_parameters():
            if name_.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits


def resaved_by_transformers(model: torch.nn.Module, tmp_path: Path) -> tuple[Path, dict]:
    """Export, load and re-save with transformers, dropping atom's own config key: a plain HF checkpoint."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "ours"), dtype=torch.float32)
    hf.save_pretrained(tmp_path / "resaved")
    config_path = tmp_path / "resaved" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop(ATOM_KEY, None)
    config_path.write_text(json.dumps(config))
    return config_path, config


@pytest.mark.parametrize(("name", "overrides", "architecture"), [
    ("tiny_moe", (), "Qwen3MoeForCausalLM"),
    ("tiny_moe", ("tie_embeddings=true", "moe.softmax_order=after_topk", "rope.scaling=yarn", "rope.factor=4",
                  "rope.original_max_position=128", "moe.first_k_dense=0", "n_kv_heads=1"), "Qwen3MoeForCausalLM"),
    ("tiny_moe", ("moe.normalize_weights=true", "rope.scaling=linear", "rope.factor=2"), "Qwen3MoeForCausalLM"),
    ("dense_small", ("d_model=128", "n_layers=2", "mlp_hidden=256"), "Qwen3ForCausalLM"),
])
def test_transformers_logits_match(tmp_path: Path, name: str, overrides: tuple[str, ...], architecture: str) -> None:
    model = _model(name, *overrides)
    out = export_hf(model, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    tokens = torch.randint(0, 1024, (2, 48))
    with torch.no_grad():
        ours = model(tokens).logits
    assert (ours - _hf_logits(out, tokens)).abs().max() <= 1e-4
    with torch.no_grad():
        assert torch.equal(import_hf(out).eval()(tokens).logits, ours)


def test_import_of_a_plain_transformers_checkpoint(tmp_path: Path) -> None:
    """A checkpoint saved by transformers itself (no atom_config) maps back through the HF fields."""
    model = _model("tiny_moe", "moe.normalize_weights=true")
    config_path, config = resaved_by_transformers(model, tmp_path)
    tokens = torch.randint(0, 1024, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(import_hf(tmp_path / "resaved").eval()(tokens).logits, model(tokens).logits,
                                   atol=0, rtol=0)


@pytest.mark.parametrize(("overrides", "key"), [
    (("moe.n_shared_experts=1",), "moe.n_shared_experts"),
    (("qk_norm=false",), "qk_norm"),
    (("moe.score_func=sigmoid", "moe.n_shared_experts=1", "moe.shared_expert_hidden=64"), "moe.shared_expert_hidden"),
])
def test_unsupported_configs_are_refused(tmp_path: Path, overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        export_hf(_model("tiny_moe", *overrides), tmp_path)


def test_nonzero_expert_bias_is_refused_under_softmax_scoring(tmp_path: Path) -> None:
    """Config validation refuses training such a model; a checkpoint edited by hand is still refused."""
    model = _model("tiny_moe")
    export_hf(model, tmp_path / "zero_bias")  # a bias that never moved changes nothing: allowed
    with torch.no_grad():
        model.layers[2].mlp.router.expert_bias[0] = 0.1
    with pytest.raises(ConfigError, match="moe.bias_update_rate: layer 2.*moe.score_func=sigmoid"):
        export_hf(model, tmp_path / "moved_bias")


def _biased(*overrides: str) -> torch.nn.Module:
    """A sigmoid-scored model whose selection bias moved as aux-loss-free balancing moves it."""
    model = _model("tiny_moe", "moe.score_func=sigmoid", "moe.bias_update_rate=0.001", *overrides)
    with torch.no_grad():
        for moe in model.moe_layers().values():
            moe.router.expert_bias.copy_(torch.randn(moe.cfg.n_experts) * 0.05)
    return model


@pytest.mark.parametrize("overrides", [
    (),
    ("moe.n_shared_experts=2", "moe.normalize_weights=true", "moe.first_k_dense=0", "tie_embeddings=true",
     "n_kv_heads=1", "rope.scaling=yarn", "rope.factor=4", "rope.original_max_position=128"),
])
def test_biased_router_exports_as_dots1_and_round_trips(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    model = _biased(*overrides)
    tokens = torch.randint(0, 1024, (2, 48))
    with torch.no_grad():
        ours = model(tokens).logits
        biases = {i: moe.router.expert_bias.clone() for i, moe in model.moe_layers().items()}
        for moe in model.moe_layers().values():
            moe.router.expert_bias.zero_()
        assert (model(tokens).logits - ours).abs().max() > 1e-3  # the bias changes routing: it must travel
        for i, moe in model.moe_layers().items():
            moe.router.expert_bias.copy_(biases[i])
    out = export_hf(model, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Dots1ForCausalLM"]
    assert (ours - _hf_logits(out, tokens)).abs().max() <= 1e-4
    back = import_hf(out).eval()
    assert back.cfg == model.cfg
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, ours)


def test_import_of_a_plain_transformers_dots1_checkpoint(tmp_path: Path) -> None:
    """A Dots1 checkpoint saved by transformers itself maps back, bias included, through the HF fields."""
    model = _biased("moe.normalize_weights=true")
    config_path, config = resaved_by_transformers(model, tmp_path)
    tokens = torch.randint(0, 1024, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(import_hf(tmp_path / "resaved").eval()(tokens).logits, model(tokens).logits,
                                   atol=0, rtol=0)
    config["routed_scaling_factor"] = 2.5
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="routed_scaling_factor"):
        import_hf(tmp_path / "resaved")
