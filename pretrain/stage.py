"""`atom pretrain CONFIG`: train the MoE model on a tokenized dataset or mixture.

Run under torchrun for several ranks; a plain `atom pretrain` is one process. The run directory is
claimed by rank 0; re-running the same command resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from core.exit_codes import EXIT_REQUEUE
from core.rundir import RunDir, write_json
from core.stage import Stage
from pretrain.config import RESUMABLE_CHANGES, PretrainConfig
from pretrain.parallel import check_layout, env_world, init_distributed


def plan(cfg: PretrainConfig) -> list[str]:
    _, world_size, _ = env_world()
    check_layout(cfg, world_size)
    m = cfg.model
    accum = cfg.data.global_batch // (world_size * cfg.trainer.micro_batch)
    tokens = cfg.trainer.max_steps * cfg.data.global_batch * cfg.data.seq_len
    return [
        f"build a {m.n_layers}-layer model: {m.num_params() / 1e6:.2f}M parameters, "
        f"{m.num_params(active=True) / 1e6:.2f}M active, {m.flops_per_token(cfg.data.seq_len) / 1e6:.1f} MFLOP/token",
        f"read {cfg.data.path} as {cfg.data.seq_len}-token windows; hold out whole documents filling "
        f"{cfg.data.val_sequences} of them for validation",
        f"train {cfg.trainer.max_steps} steps x {cfg.data.global_batch} sequences = {tokens:,} tokens on "
        f"{world_size} rank(s) ({cfg.parallel.backend}), {accum} micro-batch(es) of {cfg.trainer.micro_batch}",
        f"{cfg.schedule.kind} schedule, peak lr {cfg.optimizer.lr}, {cfg.schedule.warmup_steps} warmup steps",
        f"checkpoint every {cfg.checkpoint.interval} steps into {cfg.run.dir}/checkpoints, resuming the newest",
    ]


def stage_inputs(cfg: PretrainConfig) -> dict[str, str]:
    """What training reads: the token data and the checkpoint it starts from, when there is one."""
    inputs = {"data": cfg.data.path}
    if cfg.init_from:
        inputs["init_from"] = cfg.init_from
    return inputs


def run(cfg: PretrainConfig) -> dict:
    from pretrain.trainer import Preempted, Trainer

    env = init_distributed(cfg)
    if env.is_main:
        run_dir = RunDir.claim(cfg.run.dir, "pretrain", cfg, cfg.run.overwrite, RESUMABLE_CHANGES,
                               inputs=stage_inputs(cfg))
    if dist.is_initialized():
        dist.barrier()
    run_dir = RunDir(cfg.run.dir, "pretrain")
    trainer = Trainer(cfg, run_dir, env)
    try:
        last = trainer.fit()
    except Preempted as exc:
        trainer.log.warning(str(exc))
        sys.exit(EXIT_REQUEUE)
    summary = {"steps": trainer.step, "tokens_seen": trainer.tokens_seen, "final": last,
               "nonfinite_total": trainer.nonfinite_total}
    if env.is_main:
        write_json(run_dir.file("summary.json"), summary)
    return summary


STAGE = Stage("pretrain", "pretrain the MoE transformer on a tokenized mixture", PretrainConfig, plan, run,
              stage_inputs)
