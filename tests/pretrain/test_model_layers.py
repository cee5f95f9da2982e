"""RoPE scaling frequencies, grouped-query attention, and document masking."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import load_config
from pretrain.model.config import MoEModelConfig, RopeConfig
from pretrain.model.layers import Attention, RotaryEmbedding, rope_frequencies
from pretrain.model.loss import IGNORE_INDEX
from pretrain.model.transformer import Transformer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def _tiny(*overrides: str) -> MoEModelConfig:
    return load_config(MoEModelConfig, CONFIGS / "tiny_moe.yaml", ("vocab_size=512", *overrides))


def test_rope_unscaled_and_linear() -> None:
    plain, scale = rope_frequencies(64, RopeConfig(theta=500_000.0))
    expected = 1.0 / 500_000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(plain, expected.float())
    assert scale == 1.0
    linear, scale = rope_frequencies(64, RopeConfig(theta=500_000.0, scaling="linear", factor=4.0))
    torch.testing.assert_close(linear, plain / 4)
    assert scale == 1.0


def test_rope_yarn_keeps_fast_pairs_interpolates_slow_ones() -> None:
    rope = RopeConfig(theta=10_000.0, scaling="yarn", factor=8.0, original_max_position=4096)
    plain, _ = rope_frequencies(128, RopeConfig(theta=10_000.0))
    yarn, scale = rope_frequencies(128, rope)
    rotations = 4096 * plain / (2 * math.pi)  # turns each pair makes over the original context
    fast, slow = rotations > 32, rotations < 1
    assert fast.any() and slow.any()
    torch.testing.assert_close(yarn[fast], plain[fast])
    torch.testing.assert_close(yarn[slow], plain[slow] / 8)
    between = ~fast & ~slow
    assert ((yarn[between] <= plain[between]) & (yarn[between] >= plain[between] / 8)).all()
    assert scale == 0.1 * math.log(8) + 1


def test_rope_yarn_matches_transformers() -> None:
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = Qwen3Config(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=32768,
                     rope_parameters={"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 8.0,
                                      "original_max_position_embeddings": 4096})
    hf_freqs, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](hf)
    ours, scale = rope_frequencies(64, RopeConfig(theta=1_000_000.0, scaling="yarn", factor=8.0,
                                                  original_max_position=4096))
    torch.testing.assert_close(ours, hf_freqs, rtol=1e-6, atol=0)
    assert math.isclose(scale, hf_scale)


@pytest.mark.parametrize("rope_cfg", [RopeConfig(), RopeConfig(scaling="yarn", factor=4.0, original_max_position=8)],
                         ids=["plain", "yarn"])
def test_rope_tables_grow_for_longer_inputs(rope_cfg: RopeConfig) -> None:
    """An input longer than max_seq_len gets the angles of its real positions, not a stale or padded table."""
    rope = RotaryEmbedding(16, rope_cfg, max_seq_len=8)
    cos, sin = rope(20)
    freqs, scale = rope_frequencies(16, rope_cfg)
    angles = torch.arange(20, dtype=torch.float64)[:, None] * freqs.double()[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    torch.testing.assert_close(cos, (angles.cos() * scale).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, (angles.sin() * scale).float(), atol=1e-5, rtol=0)
    fresh = RotaryEmbedding(16, rope_cfg, max_seq_len=20)
    assert torch.equal(cos, fresh.cos) and torch.equal(sin, fresh.sin)
    short_cos, _ = rope(5)  # the grown table still serves shorter inputs from position 0
    assert torch.equal(short_cos, fresh.cos[:5])


def test_model_beyond_max_seq_len_uses_the_grown_tables() -> None:
    """A model built for 8 positions, fed 24 tokens, equals the same weights built for 32 positions."""
    torch.manual_seed(0)
    short = Transformer(_tiny("max_seq_len=8")).eval()
    long = Transformer(_tiny("max_seq_len=32")).eval()
    long.load_state_dict(short.state_dict())
    tokens = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        grown, reference = short(tokens).logits, long(tokens).logits
        shifted = long(torch.cat([tokens[:, :1], tokens], dim=1)).logits[:, 1:]
    assert short.rope.cos.shape[0] == 24
    torch.testing.assert_close(grown, reference, atol=1e-5, rtol=1e-5)
    # positions past 8 matter: the same tokens one position later give other logits
    assert (shifted[:, 8:] - reference[:, 8:]).abs().max() > 1e-3


def test_gqa_equals_attention_with_repeated_kv_heads() -> None:
    torch.manual_seed(0)
    gqa_cfg = _tiny("n_heads=8", "n_kv_heads=2", "head_dim=16")
    gqa = Attention(gqa_cfg)
    mha = Attention(_tiny("n_heads=8", "n_kv_heads=8", "head_dim=16"))
    group = 8 // 2
    with torch.no_grad():
        for name in ("q_proj", "o_proj", "q_norm", "k_norm"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):  # KV head h serves query heads h*group .. h*group+group-1
            w = getattr(gqa, name).weight.view(2, 16, -1)
            getattr(mha, name).weight.copy_(w.repeat_interleave(group, dim=0).reshape(8 * 16, -1))
    rope = RotaryEmbedding(16, gqa_cfg.rope, 32)
    x = torch.randn(2, 32, gqa_cfg.d_model)
    cos, sin = rope(32)
    torch.testing.assert_close(gqa(x, cos, sin), mha(x, cos, sin), atol=1e-6, rtol=1e-5)


def test_document_masking_isolates_packed_documents() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny()).eval()
    first, second = torch.randint(0, 512, (1, 12)), torch.randint(0, 512, (1, 20))
    packed = torch.cat([first, second], dim=1)
    doc_ids = torch.tensor([[0] * 12 + [1] * 20])
    with torch.no_grad():
        alone = model(second).logits
        masked = model(packed, doc_ids=doc_ids).logits[:, 12:]
        unmasked = model(packed).logits[:, 12:]
        first_alone = model(first).logits
    # Same document, other absolute positions: RoPE makes attention depend on relative offsets only.
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(packed, doc_ids=doc_ids).logits[:, :12], first_alone, atol=1e-5, rtol=1e-5)
    assert (unmasked - alone).abs().max() > 1e-3  # without doc ids the second document sees the first


def test_document_masking_has_gradients() -> None:
    """Training on packed documents (the fused-loss path): the second document's loss sends gradients
    through every attention layer but none to the first document's tokens, and the parameter gradients
    of the packed batch equal those of the two documents trained one by one."""
    torch.manual_seed(0)
    model = Transformer(_tiny())
    first, second = torch.randint(0, 512, (1, 7)), torch.randint(0, 512, (1, 11))
    packed = torch.cat([first, second], dim=1)
    inputs, targets = packed[:, :-1], packed[:, 1:].clone()
    doc_ids = torch.tensor([[0] * 7 + [1] * 10])  # the inputs: all of the first, the second less its last
    embedded: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        embedded.append(out)

    hook = model.embed.register_forward_hook(keep)

    def embedding_grad_of_second_doc_loss(ids: torch.Tensor | None) -> torch.Tensor:
        model.zero_grad()
        model(inputs, doc_ids=ids, targets=targets, loss_reduction="none").loss[7:].sum().backward()
        return embedded.pop().grad[0]

    masked = embedding_grad_of_second_doc_loss(doc_ids)
    assert torch.count_nonzero(masked[:7]) == 0  # the first document does not reach the second's loss
    assert (masked[7:].abs().sum(-1) > 0).all()
    attn = [p for name, p in model.named_parameters() if ".attn." in name]
    assert attn and all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn)
    assert embedding_grad_of_second_doc_loss(None)[:7].abs().sum() > 1e-6  # without doc ids it does
    hook.remove()

    def grads(*batches: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        model.zero_grad()
        for x, y, ids in batches:
            model(x, doc_ids=ids, targets=y, loss_reduction="none").loss.sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    targets[0, 6] = IGNORE_INDEX  # first's last token predicting second's first: in neither document alone
    together = grads((inputs, targets, doc_ids))
    alone = grads((first[:, :-1], first[:, 1:], None), (second[:, :-1], second[:, 1:], None))
    assert together and together.keys() == alone.keys()
    for name in together:
        torch.testing.assert_close(together[name], alone[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flex_document_mask_on_cuda_matches_cpu_mask() -> None:
    model = Transformer(_tiny())
    tokens = torch.randint(0, 512, (2, 256))
    doc_ids = torch.cat([torch.zeros(2, 100, dtype=torch.long), torch.ones(2, 156, dtype=torch.long)], dim=1)
    with torch.no_grad():
        cpu = model(tokens, doc_ids=doc_ids).logits
    gpu_model = model.cuda()
    out = gpu_model(tokens.cuda(), doc_ids=doc_ids.cuda())
    out.logits.float().pow(2).mean().backward()
    torch.testing.assert_close(out.logits.detach().cpu(), cpu, atol=2e-3, rtol=2e-3)
