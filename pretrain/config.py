"""The pretraining experiment: one typed tree (run, model, data, optimizer, schedule, trainer, ...)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from core.config import ConfigModel, StageConfig
from evaluation.config import TasksConfig
from pretrain.checkpoint import CheckpointConfig
from pretrain.metrics import MetricsConfig
from pretrain.model.config import MoEModelConfig
from pretrain.optim import OptimizerConfig, ScheduleConfig


class DataConfig(ConfigModel):
    """A tokenized dataset or mixture directory (with its manifest.json) read as fixed-length windows."""

    path: str
    seq_len: int = Field(gt=1)
    global_batch: int = Field(gt=0)  # sequences per optimizer step, over all ranks and micro-batches
    document_masking: bool = False  # attention stays inside each document (block-diagonal causal mask)
    # Whole documents held out (never trained on, see pretrain/held_out.py) until they fill this many
    # sequences; validation loss is reported per source.
    val_sequences: int = Field(0, ge=0)
    tokenizer_sha256: str | None = None  # if set, the data's tokenizer must be exactly this one


class TrainerConfig(ConfigModel):
    max_steps: int = Field(gt=0)
    micro_batch: int = Field(gt=0)  # sequences per rank per forward/backward
    eval_every: int | None = Field(None, gt=0)
    compile: bool = False
    activation_checkpointing: bool = False
    max_nonfinite_steps: int = Field(3, ge=1)  # consecutive non-finite losses before the run stops
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Deterministic algorithms (bit-identical reruns); on by default, cheap on CPU.
    deterministic: bool = True


class DownstreamConfig(TasksConfig):
    """Benchmark tasks scored in the loop every `every` steps (as OLMo-core's in-loop evaluator does), logged
    with the other metrics as `eval/<task>/<metric>`; use a small `limit` per task."""

    every: int = Field(gt=0)
    progress: bool = False


class ParallelConfig(ConfigModel):
    """How the same model and loop are spread over ranks (see pretrain/parallel.py)."""

    backend: Literal["none", "fsdp2", "deepspeed"] = "none"
    # FSDP2: shard within groups of `shard_size` ranks and replicate across groups (HSDP); None: all ranks.
    shard_size: int | None = Field(None, gt=0)
    mixed_precision: Literal["fp32", "bf16"] = "fp32"  # bf16 params/compute with fp32 reduction (GPU)
    fp8_all_gather: bool = False  # FSDP2 + FP8: all-gather weights in float8 (NCCL only)
    # Expert parallelism: each MoE layer's experts split over groups of `ep` data-parallel ranks, tokens sent
    # to them by all-to-all (pretrain/expert_parallel.py); FSDP2 only.
    ep: int = Field(1, ge=1)
    zero_stage: Literal[1, 2, 3] = 2  # DeepSpeed
    deepspeed_extra: dict = Field(default_factory=dict)  # merged into the generated DeepSpeed config


class PretrainConfig(StageConfig):
    model: MoEModelConfig
    data: DataConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trainer: TrainerConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    parallel: ParallelConfig = ParallelConfig()
    downstream: DownstreamConfig | None = None  # in-loop benchmark evals
    init_from: str | None = None  # a checkpoint directory to start from (mid-training, souping)
    init_optimizer: bool = False  # also take the optimizer state from `init_from` (else weights only)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        check_training(self)
        check_expert_parallel(self)
        if self.parallel.fp8_all_gather and (self.model.fp8 is None or self.model.fp8.recipe != "tensorwise"):
            raise ValueError("parallel.fp8_all_gather needs model.fp8.recipe=tensorwise")
        return self


def check_training(cfg: PretrainConfig | Any) -> None:
    """Checks across data, trainer, schedule, checkpoint and parallel that need no model (pretrain and midtrain)."""
    if cfg.checkpoint.async_save and cfg.parallel.backend == "deepspeed":
        raise ValueError("checkpoint.async_save works with parallel.backend none or fsdp2; DeepSpeed writes "
                         "its checkpoints itself, synchronously")
    if cfg.data.global_batch % cfg.trainer.micro_batch:
        raise ValueError(f"data.global_batch={cfg.data.global_batch} is not a multiple of "
                         f"trainer.micro_batch={cfg.trainer.micro_batch}")
    if cfg.schedule.warmup_steps > cfg.trainer.max_steps:
        raise ValueError(f"schedule.warmup_steps={cfg.schedule.warmup_steps} exceeds trainer.max_steps="
                         f"{cfg.trainer.max_steps}: the learning rate would never reach optimizer.lr")
    if cfg.parallel.shard_size is not None and cfg.parallel.backend != "fsdp2":
        raise ValueError(f"parallel.shard_size={cfg.parallel.shard_size} needs parallel.backend=fsdp2 "
                         f"(got {cfg.parallel.backend})")
    if cfg.parallel.fp8_all_gather and cfg.parallel.backend != "fsdp2":
        raise ValueError(f"parallel.fp8_all_gather needs parallel.backend=fsdp2 (got {cfg.parallel.backend})")
    if cfg.parallel.ep > 1 and cfg.parallel.backend != "fsdp2":
        raise ValueError(f"parallel.ep={cfg.parallel.ep} needs parallel.backend=fsdp2 (got {cfg.parallel.backend}): "
                         "expert parallelism is built on FSDP2's meshes; DeepSpeed runs keep parallel.ep=1")


def check_expert_parallel(cfg: PretrainConfig) -> None:
    """What expert parallelism needs of the model (the world size is checked once it is known)."""
    ep, moe = cfg.parallel.ep, cfg.model.moe
    if ep == 1:
        return
    if moe is None:
        raise ValueError(f"parallel.ep={ep} needs a Mixture-of-Experts model (model.moe is not set)")
    if moe.n_experts % ep:
        raise ValueError(f"parallel.ep={ep} does not divide model.moe.n_experts={moe.n_experts}: every EP rank "
                         "holds the same number of experts")
    if moe.backend == "loop":
        raise ValueError(f"parallel.ep={ep} needs model.moe.backend grouped_mm or megablocks: the per-expert "
                         "loop is the single-process reference")


# Keys that may change when a run resumes; anything else changing (model shape, data order) is refused.
RESUMABLE_CHANGES = ("trainer.max_steps", "trainer.eval_every", "trainer.compile", "trainer.activation_checkpointing",
                     "trainer.max_nonfinite_steps", "trainer.device", "checkpoint", "metrics", "run.overwrite",
                     "parallel")
