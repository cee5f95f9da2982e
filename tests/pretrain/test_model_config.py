"""Model configs: the YAML files load and build, sizes computed from the config match the built model,
and bad settings fail at load time with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import ConfigError, load_config
from pretrain.model.config import MoEModelConfig
from pretrain.model.moe import Experts
from pretrain.model.transformer import Transformer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def _load(name: str, *overrides: str) -> MoEModelConfig:
    return load_config(MoEModelConfig, CONFIGS / f"{name}.yaml", overrides)


def _active_params(model: nn.Module, cfg: MoEModelConfig) -> float:
    """Counted from the module tree (tied weights once): each expert stack counts top_k / n_experts of it."""
    total, seen = 0.0, set()
    for module in model.modules():
        share = cfg.moe.top_k / cfg.moe.n_experts if isinstance(module, Experts) else 1.0
        params = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in params)
        total += share * sum(p.numel() for p in params)
    return total


@pytest.mark.parametrize("overrides", [
    (),
    ("tie_embeddings=true", "moe.n_shared_experts=2", "moe.first_k_dense=0"),
    ("n_kv_heads=1", "qk_norm=false", "head_dim=48"),
])
def test_param_counts_match_built_moe_model(overrides: tuple[str, ...]) -> None:
    cfg = _load("tiny_moe", *overrides)
    model = Transformer(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    assert cfg.num_params(active=True) == _active_params(model, cfg)
    assert cfg.num_params(active=True) < cfg.num_params()


def test_param_counts_dense_and_olmoe() -> None:
    dense = _load("dense_small")
    built = sum(p.numel() for p in Transformer(dense).parameters())
    assert dense.num_params() == dense.num_params(active=True) == built
    olmoe = _load("olmoe_1b_7b")  # too big to build in a test; the published figures are 6.9B / 1.3B
    assert 6.8e9 < olmoe.num_params() < 7.0e9
    assert 1.2e9 < olmoe.num_params(active=True) < 1.4e9


def test_flops_per_token_counts_matmul_weights() -> None:
    cfg = _load("tiny_moe", "tie_embeddings=true")
    model = Transformer(cfg)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    matmul_weights += sum(_active_params(moe.experts, cfg) for moe in model.moe_layers().values())
    seq = 128
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq
    assert cfg.flops_per_token(seq) == 6 * matmul_weights + attention


def test_tiny_step_runs() -> None:
    cfg = _load("tiny_moe", "vocab_size=512")
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33))
    out = model(tokens[:, :-1])
    loss = nn.functional.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
    (loss + out.aux_loss + out.z_loss).backward()
    assert out.logits.shape == (2, 32, cfg.vocab_size)
    assert out.aux_loss > 0 and out.z_loss > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("overrides", "key"), [
    (("moe.top_k=9",), "moe.top_k=9"),
    (("n_kv_heads=3",), "n_kv_heads=3"),
    (("moe.backend=triton",), "moe.backend"),
    (("fp8.recipe=rowwise", "d_model=120", "head_dim=30"), "d_model=120"),
    (("fp8.recipe=rowwise", "mlp_hidden=100"), "mlp_hidden=100"),
    (("rope.scaling=yarn", "rope.factor=4"), "rope.original_max_position"),
    (("moe.first_k_dense=5",), "moe.first_k_dense=5"),
    (("moe.n_expert=8",), "moe.n_expert"),
])
def test_bad_config_names_the_key(overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load("tiny_moe", *overrides)


def test_megablocks_backend_refused_where_it_does_not_import() -> None:
    try:
        import megablocks  # noqa: F401
        pytest.skip("megablocks imports here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="moe.backend"):
        Transformer(_load("tiny_moe", "moe.backend=megablocks"))
