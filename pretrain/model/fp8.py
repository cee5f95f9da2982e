"""FP8 training of the linear layers through torchao's float8 (tensorwise or rowwise scaling).

The router, the embedding and the output head stay in high precision: routing decisions flip on
small logit errors, and the head's vocab-sized softmax is where FP8 loses the most accuracy for the
least speed. The stacked expert weights are no nn.Linear and stay in the training dtype too (FP8
grouped GEMMs are CUDA-only in torchao's MoE prototype). On CPU this runs for numerics only.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from pretrain.model.config import FP8_MULTIPLE

HIGH_PRECISION = ("router.gate", "lm_head")  # fqn suffixes never converted


def keep_high_precision(module: nn.Module, fqn: str) -> bool:
    """True for modules FP8 must not touch (router, head, anything whose shape FP8 cannot take)."""
    if not isinstance(module, nn.Linear):
        return True
    if fqn.endswith(HIGH_PRECISION):
        return True
    return module.in_features % FP8_MULTIPLE != 0 or module.out_features % FP8_MULTIPLE != 0


def convert_to_fp8(model: nn.Module, recipe: Literal["tensorwise", "rowwise"]) -> nn.Module:
    """Swap eligible nn.Linear layers of `model` for torchao Float8Linear, in place."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    return convert_to_float8_training(
        model, config=config, module_filter_fn=lambda module, fqn: not keep_high_precision(module, fqn)
    )
