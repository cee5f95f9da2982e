"""Schedules are pure functions of the step; weight decay skips norms, biases and embeddings."""

import math

import pytest
from torch import nn

from pretrain.optim import OptimizerConfig, ScheduleConfig, build_optimizer, lr_multiplier


def curve(cfg: ScheduleConfig, total: int) -> list[float]:
    return [lr_multiplier(cfg, s, total) for s in range(total)]


def test_cosine_warmup_then_decay_to_floor():
    c = curve(ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1), 100)
    assert c[0] == pytest.approx(0.1) and c[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(c[10:], c[11:], strict=False))
    assert c[-1] == pytest.approx(0.1) and c[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 46 / 90)))


def test_wsd_is_flat_then_decays_in_the_last_fraction():
    c = curve(ScheduleConfig(kind="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.0), 100)
    assert c[5:80] == [1.0] * 75
    assert c[80] < 1.0 and c[-1] == pytest.approx(0.0)
    sqrt = curve(ScheduleConfig(kind="wsd", decay_fraction=0.2, min_lr_ratio=0.0, decay_shape="sqrt"), 100)
    assert sqrt[90] < c[90]


def test_linear_anneal_without_warmup():
    c = curve(ScheduleConfig(kind="linear", warmup_steps=0, min_lr_ratio=0.0), 10)
    assert c == pytest.approx([1 - (s + 1) / 10 for s in range(10)])


def test_decay_groups():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 4), "proj": nn.Linear(4, 4), "attn_norm": nn.LayerNorm(4)})
    opt = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(model["proj"].weight)}
    assert opt.param_groups[1]["weight_decay"] == 0.0 and len(opt.param_groups[1]["params"]) == 4
