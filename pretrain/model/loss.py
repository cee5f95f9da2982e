"""Cross-entropy of the output head without the full logits: the head matmul and the loss, fused, in chunks.

With a 32k-256k vocabulary the logits are the largest tensor of a training step ([tokens, vocab] in
fp32), and a plain `cross_entropy(lm_head(h), y)` writes them, their log-softmax, a zero-filled
gradient of the same size and the gradient itself. Here each chunk of rows is turned into logits,
reduced to its loss, and — when a backward will follow — immediately into the gradients of the
hidden states and of the head weight (softmax - one-hot, times the weight / the hidden rows), the way
Liger's and OLMo-core's fused losses do. Peak memory is one chunk of logits; the backward is a scale.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MiB in fp32): rows = CHUNK_ELEMENTS // vocab
IGNORE_INDEX = -100


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """Softmax and gradient sums run in fp32 at least (bf16 logits would round the loss)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        grad_hidden = torch.empty_like(hidden)
        wide = _wide(weight.dtype)
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device)
        total = torch.zeros((), dtype=wide, device=hidden.device)
        rows = _rows_per_chunk(weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            h, y, keep = hidden[start:start + rows], targets[start:start + rows], valid[start:start + rows]
            logp = torch.log_softmax((h @ weight.T).to(wide), dim=-1)  # one fused pass
            safe_y = torch.where(keep, y, 0)
            total -= (logp.gather(1, safe_y[:, None]).squeeze(1) * keep).sum()
            grad = logp.exp_()  # the softmax, in place
            grad[torch.arange(len(y), device=y.device), safe_y] -= 1.0
            grad.mul_(keep[:, None]).div_(count)
            grad = grad.to(weight.dtype)
            grad_hidden[start:start + rows] = grad @ weight
            if weight.dtype == wide:
                grad_weight.addmm_(grad.T, h)
            else:
                grad_weight += (grad.T @ h).to(wide)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) over rows of hidden [N, d]; targets [N] (IGNORE_INDEX
    rows do not count): their mean, or each row's loss (`none`). `mean` under autograd runs the fused,
    gradient-in-forward path; otherwise the loss is computed chunk by chunk without keeping anything."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if reduction == "mean" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets)
    rows = _rows_per_chunk(weight.shape[0])
    wide = _wide(weight.dtype)
    losses = [F.cross_entropy((hidden[s:s + rows] @ weight.T).to(wide), targets[s:s + rows], reduction="none",
                              ignore_index=IGNORE_INDEX) for s in range(0, hidden.shape[0], rows)]
    per_token = torch.cat(losses)
    if reduction == "none":
        return per_token
    return per_token.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
