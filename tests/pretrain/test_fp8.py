"""FP8 training through torchao: conversion filter, forward+backward on CPU, loss close to fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.config import load_config
from pretrain.config import PretrainConfig
from pretrain.converters import Float8Converter, build_converted, model_converters
from pretrain.model.config import MoEModelConfig
from pretrain.model.fp8 import convert_to_fp8
from pretrain.model.transformer import OutputHead, Transformer
from tests.pretrain.fixtures import tiny_pretrain

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
LOSS_TOLERANCE = 0.02  # relative difference of FP8 to fp32 loss, at every step of a short run
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _train(model: nn.Module, tokens: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        (loss + out.aux_loss + out.z_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_filter_and_loss_close_to_fp32(recipe: str) -> None:
    from torchao.float8.float8_linear import Float8Linear

    torch.manual_seed(0)
    cfg = load_config(MoEModelConfig, CONFIGS / "tiny_moe.yaml", ["vocab_size=512", f"fp8.recipe={recipe}"])
    reference = Transformer(cfg)
    fp8 = convert_to_fp8(copy.deepcopy(reference), recipe)

    assert type(fp8.lm_head) is OutputHead and type(fp8.embed) is nn.Embedding  # kept high precision
    for moe in fp8.moe_layers().values():
        assert type(moe.router.gate) is nn.Linear
    assert isinstance(fp8.layers[0].attn.q_proj, Float8Linear)
    assert isinstance(fp8.layers[0].mlp.down_proj, Float8Linear)

    tokens = torch.randint(0, 512, (2, 65))
    fp32_losses, fp8_losses = _train(reference, tokens, 4), _train(fp8, tokens, 4)
    assert fp8_losses[-1] < fp8_losses[0]  # it trains
    for a, b in zip(fp32_losses, fp8_losses, strict=True):
        assert abs(a - b) / a < LOSS_TOLERANCE, (fp32_losses, fp8_losses)


def test_the_run_config_applies_fp8_as_a_converter_between_build_and_parallelize(tmp_path) -> None:
    from torchao.float8.float8_linear import Float8Linear

    base = tiny_pretrain(tmp_path / "data", tmp_path / "run")
    assert model_converters(base) == []
    settings = base.to_dict()
    settings["model"]["fp8"] = {"recipe": "rowwise"}
    cfg = PretrainConfig.model_validate(settings)
    assert type(Transformer(cfg.model).layers[1].attn.o_proj) is nn.Linear  # the config builds only the model
    model, converters = build_converted(cfg)
    assert [type(c) for c in converters] == [Float8Converter] and not converters[0].fsdp_all_gather
    assert isinstance(model.layers[1].attn.o_proj, Float8Linear)
    assert type(model.layers[1].mlp.router.gate) is nn.Linear


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_on_cuda_bf16(recipe: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(MoEModelConfig, CONFIGS / "tiny_moe.yaml", [])
    reference = Transformer(cfg).cuda().to(torch.bfloat16)
    fp8 = convert_to_fp8(copy.deepcopy(reference), recipe)
    tokens = torch.randint(0, cfg.vocab_size, (8, 257), device="cuda")
    bf16_losses, fp8_losses = _train(reference, tokens, 5), _train(fp8, tokens, 5)
    for a, b in zip(bf16_losses, fp8_losses, strict=True):
        assert abs(a - b) / a < LOSS_TOLERANCE, (bf16_losses, fp8_losses)


def test_fp8_all_gather_build_trains_on_cpu_in_one_process() -> None:
    """The float8 all-gather weights (FSDP2 over NCCL on GPU) still train as plain FP8 in one process."""
    torch.manual_seed(0)
    cfg = load_config(MoEModelConfig, CONFIGS / "tiny_moe.yaml", ["vocab_size=512", "fp8.recipe=tensorwise"])
    model = Float8Converter("tensorwise", fsdp_all_gather=True).convert(Transformer(cfg))
    assert model.layers[1].attn.o_proj.config.enable_fsdp_float8_all_gather
    tokens = torch.randint(0, cfg.vocab_size, (2, 33))
    losses = _train(model, tokens, 3)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="tensorwise"):
        Float8Converter("rowwise", fsdp_all_gather=True).convert(Transformer(cfg))
