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


def convert_to_fp8(model: nn.Module, recipe: Literal["tensorwise", "rowwise"],
                   fsdp_all_gather: bool = False) -> nn.Module:
    """Swap eligible nn.Linear layers of `model` for torchao Float8Linear, in place.

    `fsdp_all_gather` (tensorwise only) makes FSDP2 all-gather the weights already cast to float8, half
    the bytes of bf16; it needs NCCL (gloo cannot send float8).
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    if fsdp_all_gather:
        if recipe != "tensorwise":
            raise ValueError(f"FP8 all-gather needs the tensorwise recipe, not {recipe!r}")
        config = Float8LinearConfig(enable_fsdp_float8_all_gather=True)
    else:
        config = Float8LinearConfig.from_recipe_name(recipe)
    return convert_to_float8_training(
        model, config=config, module_filter_fn=lambda module, fqn: not keep_high_precision(module, fqn)
    )
