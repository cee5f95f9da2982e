"""`atom midtrain CONFIG`: continue a pretrained model on a new mix, evaluating before and after.

The run directory has the pretraining layout (the same trainer writes it) plus `midtrain.json` (the
parent checkpoint and its hash) and `evals.json` (`before`: the parent's weights in the new model
config; `after`: the final weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from core.exit_codes import EXIT_REQUEUE
from core.rundir import RunDir, write_json
from core.stage import Stage
from data_pipeline.tokenizer.train import load_tokenizer
from midtrain.config import MidtrainConfig, find_parent, to_pretrain_config
from pretrain.checkpoint import checkpoint_digest
from pretrain.config import RESUMABLE_CHANGES
from pretrain.parallel import check_layout, env_world, init_distributed

EVALS = "evals.json"


def plan(cfg: MidtrainConfig) -> list[str]:
    parent = find_parent(cfg.parent)
    pcfg = to_pretrain_config(cfg, parent)
    check_layout(pcfg, env_world()[1])
    m = pcfg.model
    return [
        f"start from {parent.checkpoint.path} (step {parent.checkpoint.step}), loading {cfg.load}",
        f"model: rope {m.rope.scaling} (theta {m.rope.theta}, factor {m.rope.factor}), max_seq_len "
        f"{parent.model.max_seq_len} -> {m.max_seq_len}",
        f"train {cfg.trainer.max_steps} steps on {cfg.data.path} ({cfg.data.seq_len}-token windows, document "
        f"masking {'on' if cfg.data.document_masking else 'off'}), {cfg.schedule.kind} schedule from lr "
        f"{cfg.optimizer.lr}, {cfg.schedule.warmup_steps} warmup steps",
        f"evaluate before and after: perplexity per source, {cfg.evals.reasoning_problems} held-out problems, "
        f"passkey x{cfg.evals.passkey_trials}; write {cfg.run.dir}/{EVALS}",
    ]


def _evaluate(trainer, cfg: MidtrainConfig, lengths: list[int]) -> dict:
    from midtrain.evals import run_evals

    tokenizer = load_tokenizer(trainer.data.tokenizer_dir())
    return run_evals(trainer.engine.model, tokenizer, trainer.env.device, cfg.evals, trainer.cfg.model.max_seq_len,
                     lengths, trainer.evaluate())


def stage_inputs(cfg: MidtrainConfig) -> dict[str, str | Path]:
    """The parent checkpoint this run starts from and its data."""
    return {"parent": find_parent(cfg.parent).checkpoint.path, "data": cfg.data.path}


def run(cfg: MidtrainConfig) -> dict:
    from pretrain.trainer import Preempted, Trainer

    parent = find_parent(cfg.parent)
    pcfg = to_pretrain_config(cfg, parent)
    env = init_distributed(pcfg)
    if env.is_main:
        run_dir = RunDir.claim(cfg.run.dir, "midtrain", cfg, cfg.run.overwrite, RESUMABLE_CHANGES,
                               inputs=stage_inputs(cfg))
        write_json(run_dir.file("midtrain.json"), {
            "parent": {"checkpoint": str(parent.checkpoint.path), "step": parent.checkpoint.step,
                       "content_sha256": checkpoint_digest(parent.checkpoint.path),
                       "model": parent.model.to_dict()},
            "load": cfg.load, "model_changes": cfg.model})
    if dist.is_initialized():
        dist.barrier()
    run_dir = RunDir(cfg.run.dir, "midtrain")
    trainer = Trainer(pcfg, run_dir, env)
    trainer.start()
    lengths = cfg.evals.passkey_lengths or sorted({parent.model.max_seq_len, pcfg.model.max_seq_len})
    evals_path = run_dir.file(EVALS)
    evals = json.loads(evals_path.read_text()) if evals_path.is_file() else {}
    if "before" not in evals:
        evals["before"] = _evaluate(trainer, cfg, lengths)
        if env.is_main:
            write_json(evals_path, evals)
    try:
        last = trainer.fit()
    except Preempted as exc:
        trainer.log.warning(str(exc))
        sys.exit(EXIT_REQUEUE)
    evals["after"] = _evaluate(trainer, cfg, lengths)
    summary = {"steps": trainer.step, "tokens_seen": trainer.tokens_seen, "final": last, "evals": evals}
    if env.is_main:
        write_json(evals_path, evals)
        write_json(run_dir.file("summary.json"), summary)
        trainer.log.info("evals before -> after: " + json.dumps(
            {k: {"reasoning": (v.get("reasoning") or {}).get("accuracy"), "passkey": v.get("passkey")}
             for k, v in evals.items()}))
    return summary


STAGE = Stage("midtrain", "continue a pretrained checkpoint: new mix, longer context, anneal; evals before/after",
              MidtrainConfig, plan, run, stage_inputs)
