"""The training loop. It reads top to bottom: build, resume, then step until max_steps.

Everything a step needs is built once in `Trainer.__init__`; the step itself does the forward and
backward passes of its micro-batches, clips, steps, and hands numbers to the metrics logger, the
training manifest and the checkpointer.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.rundir import RunDir
from pretrain.checkpoint import Checkpointer, kill_point
from pretrain.config import PretrainConfig
from pretrain.data import Batch, DataLoader
from pretrain.dataset import open_training_data
from pretrain.engine import build_engine
from pretrain.metrics import MetricsLogger, matmul_peak, truncate_jsonl
from pretrain.optim import lr_multiplier
from pretrain.parallel import DistEnv, all_reduce_mean, init_distributed
from pretrain.preemption import PreemptionWatch
from pretrain.train_manifest import TRAIN_MANIFEST, TrainManifest

log = logging.getLogger("atom.pretrain")


class Preempted(Exception):
    """The run checkpointed and stopped on a preemption signal; exit with EXIT_REQUEUE."""


class NonFiniteLossError(RuntimeError):
    """Raised after `trainer.max_nonfinite_steps` consecutive non-finite steps (a checkpoint is written first)."""


class Trainer:
    def __init__(self, cfg: PretrainConfig, run: RunDir, env: DistEnv | None = None):
        self.cfg = cfg
        self.run = run
        self.env = env or init_distributed(cfg)
        self.log = run.logger() if self.env.is_main else log
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.run.seed)

        self.data = open_training_data(cfg.data, cfg.model, cfg.init_from)
        self.loader = DataLoader(self.data.windows, cfg.data.global_batch, cfg.run.seed, self.env.rank,
                                 self.env.world_size, cfg.data.document_masking, self.data.held_out.windows)
        self.engine = build_engine(cfg, self.env)
        self.checkpointer = Checkpointer(run.file("checkpoints"), cfg.checkpoint, self.log)
        self.metrics = MetricsLogger(run.path, cfg.metrics, enabled=self.env.is_main)
        self.manifest = TrainManifest(run.file(TRAIN_MANIFEST), enabled=self.env.is_main)
        self.step = 0
        self.tokens_seen = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        # The last step's loss, aux_loss, z_loss and grad_norm: checkpointed, so a run resumed at max_steps
        # (killed after its final checkpoint) still reports them as its final figures.
        self.last_stats: dict = {}
        self.flops_per_token = cfg.model.flops_per_token(cfg.data.seq_len)
        peak = cfg.metrics.peak_flops_per_device
        self.peak_flops: float | None = peak if peak != "measure" else None
        if peak == "measure":
            dtype = torch.bfloat16 if cfg.parallel.mixed_precision == "bf16" else torch.float32
            self.peak_flops = matmul_peak(self.env.device, dtype)
            self.log.info(f"measured matmul peak for MFU: {self.peak_flops / 1e12:.2f} TFLOP/s per device ({dtype})")
        self.preemption = PreemptionWatch(run.path, self.env.is_main)
        self._started = False
        self._codec: Any = None  # the tokenizer, loaded for the first downstream eval

    # ---- state -------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "data": self.loader.state_dict(),
                "nonfinite_total": self.nonfinite_total, "world_size": self.env.world_size,
                "model": self.cfg.model.to_dict(), "last_stats": self.last_stats,
                # the logging rank's: only rank 0 logs the expert load (every rank restores these)
                "load_counters": self.engine.load_counters()}

    def save(self, blocking: bool = True) -> Path:
        """Checkpoint now; with `blocking=False` (and checkpoint.async_save) training continues while it is
        written, and it completes at the next save."""
        return self.engine.save(self.checkpointer, self.step, self.trainer_state(), blocking)

    def resume(self) -> bool:
        ckpt = self.checkpointer.latest_valid(warn=self.log.warning)
        if ckpt is None:
            if self.cfg.init_from:
                self.engine.load_weights(Path(self.cfg.init_from), self.cfg.init_optimizer)
                what = "weights and optimizer state" if self.cfg.init_optimizer else "weights"
                self.log.info(f"initialised {what} from {self.cfg.init_from}")
            return False
        state = self.engine.load(self.checkpointer, ckpt)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.nonfinite_total = state["nonfinite_total"]
        self.last_stats = state.get("last_stats", {})  # absent from checkpoints of older versions
        self.engine.restore_load_counters(state.get("load_counters", {}))
        self.loader.load_state_dict(state["data"])
        if self.env.is_main:
            truncate_jsonl(self.manifest.path, self.step)
        self.log.info(f"resumed from {ckpt.path} at step {self.step} ({self.tokens_seen} tokens)")
        return True

    # ---- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Resume (or initialise) once; `fit` calls it, callers that evaluate first may call it earlier."""
        if self._started:
            return
        # The records keep what the checkpoint resumed from covers and nothing more: the rest (everything,
        # when starting from scratch) comes from an attempt killed after writing it, and is written again.
        fresh = not self.resume()
        if fresh and self.env.is_main:
            self.manifest.write_header(self.data.describe(), self.cfg, self.loader)  # replaces the file
        self.metrics.start(self.step, fresh)
        if fresh and len(self.data.held_out.eval_windows):
            self.metrics.log(0, {"val/unigram_loss": self.data.unigram_loss()})
        self._started = True

    def fit(self) -> dict:
        cfg = self.cfg
        self.start()
        while self.step < cfg.trainer.max_steps:
            kill_point("before_step", self.step + 1)
            start = time.perf_counter()
            batch = self.loader.next_batch()
            lr = cfg.optimizer.lr * lr_multiplier(cfg.schedule, self.step, cfg.trainer.max_steps)
            stats = self.train_step(batch, lr)
            elapsed = time.perf_counter() - start
            if stats is None:
                continue
            self.step += 1
            step_tokens = cfg.data.global_batch * cfg.data.seq_len
            self.tokens_seen += step_tokens
            self.manifest.record(self.step, self.loader.batches_consumed - 1, step_tokens)
            self.last_stats = stats
            if self.step % cfg.metrics.log_every == 0 or self.step == cfg.trainer.max_steps:
                self.metrics.log(self.step, self._metrics(stats, lr, elapsed, step_tokens))
            if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0:
                self.metrics.log(self.step, self.evaluate())
            if cfg.downstream and self.step % cfg.downstream.every == 0:
                self.metrics.log(self.step, self.downstream())
            if self.step % cfg.checkpoint.interval == 0 or self.step == cfg.trainer.max_steps:
                self.save(blocking=self.step == cfg.trainer.max_steps)
            elif self.preemption.should_stop():
                self.save()
                self.preemption.handled()
                self.metrics.close()
                raise Preempted(f"stopped at step {self.step} on {self.preemption.reason()}; checkpoint written")
        self.metrics.close()
        return self.last_stats

    def train_step(self, batch: Batch, lr: float) -> dict | None:
        """One optimizer step over this rank's micro-batches; None if the step was skipped."""
        engine, cfg = self.engine, self.cfg
        engine.set_lr(lr)
        micro = cfg.trainer.micro_batch
        n_micro = batch.inputs.shape[0] // micro
        totals = torch.zeros(3, device=self.env.device)  # summed on the device: one host sync per step
        for i in range(n_micro):
            rows = slice(i * micro, (i + 1) * micro)
            doc_ids = batch.doc_ids[rows].to(self.env.device) if batch.doc_ids is not None else None
            with engine.accumulate(is_last=i == n_micro - 1):
                out = engine.model(batch.inputs[rows].to(self.env.device), doc_ids=doc_ids,
                                   targets=batch.targets[rows].to(self.env.device))
                ce = out.loss
                loss = ce + out.aux_loss + out.z_loss
                engine.backward(loss / n_micro)
            totals += torch.stack([ce.detach(), out.aux_loss.detach(), out.z_loss.detach()]).float() / n_micro
        totals = all_reduce_mean(totals).cpu()  # reduced where it lives (NCCL takes device tensors only)
        grad_norm = engine.step(cfg.optimizer.grad_clip, math.isfinite(totals.sum().item()))
        if grad_norm is None:
            self._skip_nonfinite(totals[0].item())
            return None
        self.nonfinite_in_a_row = 0
        return {"loss": totals[0].item(), "aux_loss": totals[1].item(), "z_loss": totals[2].item(),
                "grad_norm": grad_norm}

    def _skip_nonfinite(self, loss: float) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.log.warning(f"step {self.step + 1}: non-finite loss ({loss}) or gradient norm; step skipped "
                         f"({self.nonfinite_in_a_row} in a row)")
        if not self.engine.skips_nonfinite:
            raise NonFiniteLossError(f"non-finite step at step {self.step} with backend {self.cfg.parallel.backend}, "
                                     "which cannot skip a step; resume from the last checkpoint")
        if self.nonfinite_in_a_row >= self.cfg.trainer.max_nonfinite_steps:
            self.save()
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} non-finite steps in a row at step {self.step}; "
                                     f"checkpoint written, run stopped")
        return None

    def _metrics(self, stats: dict, lr: float, elapsed: float, step_tokens: int) -> dict:
        tokens_per_s = step_tokens / max(elapsed, 1e-9)
        values = {**stats, "lr": lr, "tokens_per_s": tokens_per_s, "tokens_seen": self.tokens_seen,
                  "nonfinite_total": self.nonfinite_total,
                  "tokens_per_s_per_rank": tokens_per_s / self.env.world_size}
        peak = self.peak_flops
        if peak:
            values["mfu"] = tokens_per_s * self.flops_per_token / (peak * self.env.world_size)
        if self.env.device.type == "cuda":
            values["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated(self.env.device) / 2**30
        else:
            import resource

            values["memory/max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        values.update(self.engine.expert_load())
        return values

    def downstream(self) -> dict[str, float]:
        """The configured benchmark tasks on the current weights: `eval/<task>/<metric>`. Every rank scores
        every instance (a sharded model's forward is collective); the weights alone decide the numbers, so
        a resumed run logs what an uninterrupted one does."""
        from evaluation.runner import run_tasks
        from evaluation.scoring import TokenizerCodec

        assert self.cfg.downstream is not None
        if self._codec is None:
            from data_pipeline.tokenizer.train import eos_token, load_tokenizer

            where = self.data.tokenizer_dir()
            self._codec = TokenizerCodec(load_tokenizer(where), eos_token(where))
        model: nn.Module = self.engine.model
        model.eval()
        results = run_tasks(self.cfg.downstream, lambda tokens: model(tokens).logits, self._codec,
                            self.cfg.model.max_seq_len, self.env.device)
        model.train()
        return {f"eval/{r.task.name}/{name}": value for r in results for name, value in r.metrics.items()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean cross-entropy per token of the held-out documents, overall and per source."""
        model: nn.Module = self.engine.model
        model.eval()
        sources = self.data.held_out.sources
        totals = torch.zeros(2, len(sources) + 1, dtype=torch.float64)  # [sum, count] per range (+1: unscored)
        for batch in self.data.val_batches(self.env.rank, self.env.world_size, self.cfg.trainer.micro_batch,
                                           self.cfg.data.document_masking):
            doc_ids = None if batch.doc_ids is None else batch.doc_ids.to(self.env.device)
            out = model(batch.tokens[:, :-1].to(self.env.device), doc_ids=doc_ids,
                        targets=batch.tokens[:, 1:].to(self.env.device), loss_reduction="none")
            ce = out.loss.double().cpu()
            slot = torch.where(batch.scored.flatten() >= 0, batch.scored.flatten(), len(sources))
            totals[0].index_add_(0, slot, ce)
            totals[1].index_add_(0, slot, torch.ones_like(ce))
        model.train()
        if dist.is_initialized():
            dist.all_reduce(totals)
        sums: dict[str, list[float]] = {}
        for i, source in enumerate(sources):
            acc = sums.setdefault(source, [0.0, 0.0])
            acc[0] += totals[0, i].item()
            acc[1] += totals[1, i].item()
        sums = {source: acc for source, acc in sums.items() if acc[1] > 0}
        if not sums:
            return {}
        result = {f"val/loss/{source}": total / count for source, (total, count) in sorted(sums.items())}
        result["val/loss"] = sum(t for t, _ in sums.values()) / sum(c for _, c in sums.values())
        return result
