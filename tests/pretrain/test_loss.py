"""The fused head + cross-entropy equals the plain one in value and gradients, over several chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import loss as loss_module
from pretrain.model.loss import IGNORE_INDEX, linear_cross_entropy
from pretrain.model.transformer import Transformer
from tests.pretrain.fixtures import tiny_model


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 100)  # 7 rows of a 100-token vocabulary per chunk


def test_value_and_gradients_equal_plain_cross_entropy(small_chunks):
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(100, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 100, (30,))
    targets[[3, 17]] = IGNORE_INDEX  # ignored rows count neither in the mean nor in the gradients
    fused = linear_cross_entropy(hidden, weight, targets)
    (2.5 * fused).backward()  # a scale on the loss (gradient accumulation) reaches the gradients
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)
    (2.5 * plain).backward()
    assert torch.allclose(fused, plain, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grads[1], weight.grad, rtol=1e-10, atol=1e-12)
    assert grads[0][[3, 17]].abs().max() == 0
    with torch.no_grad():  # without autograd: the chunked loss only, per token or reduced
        per_token = linear_cross_entropy(hidden, weight, targets, reduction="none")
        assert torch.allclose(per_token, F.cross_entropy(hidden @ weight.T, targets, reduction="none",
                                                         ignore_index=IGNORE_INDEX))
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets), plain)


def test_model_trains_the_same_with_targets_as_with_logits(small_chunks):
    """model(x, targets=y) against cross_entropy(model(x).logits, y): loss and every parameter's gradient,
    with tied embeddings (the head's gradient and the embedding's add up)."""
    cfg = tiny_model()
    cfg = cfg.model_copy(update={"vocab_size": 100, "tie_embeddings": True,
                                 "moe": cfg.moe.model_copy(update={"backend": "loop"})})  # loop: takes fp64
    torch.manual_seed(0)
    model = Transformer(cfg).double()
    tokens = torch.randint(0, 100, (2, 17))
    x, y = tokens[:, :-1], tokens[:, 1:]
    fused = model(x, targets=y)
    assert fused.logits is None
    (fused.loss + fused.aux_loss).backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(x)
    plain = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    (plain + out.aux_loss).backward()
    assert torch.allclose(fused.loss, plain, rtol=1e-12)
    for name, param in model.named_parameters():
        assert torch.allclose(fused_grads[name], param.grad, rtol=1e-9, atol=1e-12), name
    with torch.no_grad():  # evaluation's per-token losses, without the logits
        per_token = model(x, targets=y, loss_reduction="none").loss
        assert per_token.shape == (y.numel(),)
        assert torch.allclose(per_token, F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="none"),
                              rtol=1e-12)


def test_bf16_stays_close_to_fp32():
    torch.manual_seed(0)
    hidden = torch.randn(64, 32)
    weight = torch.randn(1000, 32) * 0.1
    targets = torch.randint(0, 1000, (64,))
    ref = F.cross_entropy(hidden @ weight.T, targets)
    h16 = hidden.bfloat16().requires_grad_()
    w16 = weight.bfloat16().requires_grad_()
    got = linear_cross_entropy(h16, w16, targets)
    got.backward()
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) < 2e-2 * ref.item()
    assert w16.grad.dtype == torch.bfloat16 and torch.isfinite(w16.grad).all()
