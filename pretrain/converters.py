"""Model converters: changes applied to a freshly built model before it is parallelized (torchtitan's seam).

The model config builds only the model (`Transformer(cfg.model)`); what a run changes about it (today: FP8
linears) is a converter the engine applies between build and parallelize, and whose per-step upkeep (the
FP8 all-gather's scale precompute) runs from the converter's own hook after each optimizer step, so no
engine names FP8.
"""

from __future__ import annotations

from typing import Literal, Protocol

from torch import nn

from pretrain.config import PretrainConfig
from pretrain.model.fp8 import convert_to_fp8
from pretrain.model.transformer import Transformer


class ModelConverter(Protocol):
    def convert(self, model: nn.Module) -> nn.Module:
        """Change `model` in place (before parallelize) and return it."""
        ...

    def post_optimizer_step(self, model: nn.Module) -> None:
        """Upkeep after each optimizer step, on the parallelized model."""
        ...


class Float8Converter:
    """Eligible nn.Linear layers to torchao Float8Linear; with FSDP2's float8 all-gather, one all-reduce of
    every layer's scale after each step instead of one per layer in the next forward."""

    def __init__(self, recipe: Literal["tensorwise", "rowwise"], fsdp_all_gather: bool = False):
        self.recipe = recipe
        self.fsdp_all_gather = fsdp_all_gather

    def convert(self, model: nn.Module) -> nn.Module:
        return convert_to_fp8(model, self.recipe, fsdp_all_gather=self.fsdp_all_gather)

    def post_optimizer_step(self, model: nn.Module) -> None:
        if self.fsdp_all_gather:
            from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

            precompute_float8_dynamic_scale_for_fsdp(model)


def model_converters(cfg: PretrainConfig) -> list[ModelConverter]:
    """The converters a run's config asks for, in the order they apply."""
    if cfg.model.fp8 is None:
        return []
    return [Float8Converter(cfg.model.fp8.recipe, cfg.parallel.fp8_all_gather)]  # validated: fsdp2 only


def build_converted(cfg: PretrainConfig) -> tuple[Transformer, list[ModelConverter]]:
    """The run's model with fresh weights and its converters applied (not yet parallelized)."""
    model = Transformer(cfg.model)
    converters = model_converters(cfg)
    for converter in converters:
        converter.convert(model)
    return model, converters
