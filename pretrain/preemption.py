"""Graceful stop on preemption: a signal (SLURM's `--signal`, SIGTERM) or a STOP file in the run dir.

The handler only sets a flag; at the next step boundary all ranks agree (the flag is max-reduced), write
a checkpoint and exit with `core.exit_codes.EXIT_REQUEUE`, which the SLURM launcher reads as "requeue me".
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch
import torch.distributed as dist

STOP_FILE = "STOP"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionWatch:
    def __init__(self, run_dir: Path, is_main: bool):
        self.stop_file = run_dir / STOP_FILE
        self.is_main = is_main
        self.received: int | None = None
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal or the STOP file exists."""
        flag = torch.tensor([1.0 if self.received is not None or self.stop_file.exists() else 0.0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def handled(self) -> None:
        """The stop was acted on (a checkpoint is written): the request is used up. It is removed only
        now, not at start, so a warning that arrives before training begins is not lost."""
        if self.is_main:
            self.stop_file.unlink(missing_ok=True)

    def reason(self) -> str:
        if self.received is not None:
            return f"signal {signal.Signals(self.received).name}"
        return f"{self.stop_file} present"
