"""The mid-training experiment: a parent checkpoint, what may change about the model, and a new run.

Mid-training is pretraining started from a parent checkpoint, with a linear anneal to zero (no warmup)
by default, and optionally a longer context (RoPE theta or YaRN). `model:` holds only the keys that
change; the rest comes from the parent, and a change of shape is refused before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from core.config import MAX_SEED, ConfigError, ConfigModel, StageConfig, deep_merge, validate
from core.rundir import changed_keys
from data_pipeline.synthetic.problems import GENERATORS, LEVELS, unknown_generators
from pretrain.checkpoint import TRAINER_STATE, Checkpoint, CheckpointConfig, Checkpointer, verify
from pretrain.config import (
    DataConfig,
    DownstreamConfig,
    ParallelConfig,
    PretrainConfig,
    TrainerConfig,
    check_training,
)
from pretrain.metrics import MetricsConfig
from pretrain.model.config import MoEModelConfig
from pretrain.optim import OptimizerConfig, ScheduleConfig

# Model keys a continuation may change: context handling and loss weights, nothing that has a shape.
CHANGEABLE_MODEL_KEYS = ("rope.", "max_seq_len", "moe.aux_loss_weight", "moe.z_loss_weight",
                         "moe.bias_update_rate", "moe.backend", "fp8")


class EvalConfig(ConfigModel):
    """Evaluations run before and after mid-training (see midtrain/evals.py)."""

    reasoning_problems: int = Field(40, ge=0)
    reasoning_generators: list[str] = Field(default_factory=lambda: ["arithmetic"], min_length=1)
    reasoning_difficulties: list[Annotated[int, Field(ge=min(LEVELS), le=max(LEVELS))]] = Field(
        default_factory=lambda: [1], min_length=1)
    reasoning_seed: int = Field(987_654_321, ge=0, le=MAX_SEED)  # held out: the training problems use other seeds
    max_new_tokens: int = Field(64, gt=0)
    passkey_trials: int = Field(10, ge=0)
    # default: the parent's and the new context length
    passkey_lengths: list[Annotated[int, Field(gt=0)]] | None = Field(None, min_length=1)

    @field_validator("reasoning_generators")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = unknown_generators(names)
        if unknown:
            raise ValueError(f"unknown generator(s) {', '.join(map(repr, unknown))} (known: {', '.join(GENERATORS)})")
        return names


class MidtrainConfig(StageConfig):
    parent: str  # a pretraining (or mid-training, or soup) run directory, or one checkpoint directory
    load: Literal["weights", "full"] = "weights"  # full: also the parent's optimizer state
    model: dict[str, Any] = Field(default_factory=dict)  # changes to the parent's model config
    data: DataConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig(kind="linear", warmup_steps=0, min_lr_ratio=0.0)
    trainer: TrainerConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    parallel: ParallelConfig = ParallelConfig()
    evals: EvalConfig = EvalConfig()
    downstream: DownstreamConfig | None = None  # in-loop benchmark evals, as in pretraining

    @model_validator(mode="after")
    def _check(self) -> MidtrainConfig:
        check_training(self)  # what needs the parent's model is checked once it is read (to_pretrain_config)
        return self


@dataclass(frozen=True)
class Parent:
    checkpoint: Checkpoint
    model: MoEModelConfig
    state: dict[str, Any]


def find_parent(path: str | Path) -> Parent:
    """The newest complete checkpoint of a run directory, or the given checkpoint directory."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        ckpt = Checkpointer(path / "checkpoints", CheckpointConfig()).latest_valid()
        if ckpt is None:
            raise ConfigError(f"parent: {path} has no complete checkpoint")
    elif (path / TRAINER_STATE).is_file():
        ckpt = Checkpoint(path, int(json.loads((path / TRAINER_STATE).read_text())["step"]))
        problem = verify(ckpt)
        if problem:
            raise ConfigError(f"parent: {path} is damaged: {problem}")
    else:
        raise ConfigError(f"parent: {path} is neither a run directory with checkpoints/ nor a checkpoint")
    state = json.loads((ckpt.path / TRAINER_STATE).read_text())
    if "model" not in state:
        raise ConfigError(f"parent: {ckpt.path / TRAINER_STATE} records no model config")
    return Parent(ckpt, validate(MoEModelConfig, state["model"], source=str(ckpt.path / TRAINER_STATE)), state)


def resolve_model(parent: MoEModelConfig, changes: dict[str, Any]) -> MoEModelConfig:
    model = validate(MoEModelConfig, deep_merge(parent.to_dict(), changes), source="midtrain config (model)")
    refused = [k for k in changed_keys(parent.to_dict(), model.to_dict()) if not k.startswith(CHANGEABLE_MODEL_KEYS)]
    if refused:
        a, b = _flatten_get(parent.to_dict(), refused[0]), _flatten_get(model.to_dict(), refused[0])
        raise ConfigError(f"model.{refused[0]}: {b!r} differs from the parent checkpoint's {a!r}; mid-training "
                          f"cannot change the model's shape (changeable: {', '.join(CHANGEABLE_MODEL_KEYS)})")
    rope = model.rope
    if rope.scaling != "none" and rope.original_max_position:
        supported = int(rope.original_max_position * rope.factor)
        if model.max_seq_len > supported:
            raise ConfigError(f"model.max_seq_len={model.max_seq_len} exceeds what rope.scaling={rope.scaling} "
                              f"supports: original_max_position {rope.original_max_position} x factor "
                              f"{rope.factor} = {supported}")
    return model


def _flatten_get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def to_pretrain_config(cfg: MidtrainConfig, parent: Parent) -> PretrainConfig:
    """The PretrainConfig the shared trainer runs: the parent's model with the allowed changes."""
    return validate(PretrainConfig, {
        "run": cfg.run.to_dict(), "model": resolve_model(parent.model, cfg.model).to_dict(),
        "data": cfg.data.to_dict(), "optimizer": cfg.optimizer.to_dict(), "schedule": cfg.schedule.to_dict(),
        "trainer": cfg.trainer.to_dict(), "checkpoint": cfg.checkpoint.to_dict(), "metrics": cfg.metrics.to_dict(),
        "parallel": cfg.parallel.to_dict(), "init_from": str(parent.checkpoint.path),
        "downstream": cfg.downstream.to_dict() if cfg.downstream else None,
        "init_optimizer": cfg.load == "full",
    }, source="midtrain config")
