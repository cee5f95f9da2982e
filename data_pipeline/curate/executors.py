"""The datatrove executors curation runs on, with a console that shows only what concerns the user.

Datatrove adds a console handler at INFO for every task (the pipeline listing, "Processing done", every
step's stats table): hundreds of lines per `atom data` run that repeat what atom's own summary says.
Here each task's full log still goes to its file (`work/logs/<phase>/logs/task_*.log`, DEBUG, as
datatrove writes it), and the console gets warnings and errors only. The executor subclasses apply the
policy inside every task process: unpickling them in a forkserver worker or a SLURM job imports this
module, and `_run_for_rank` (datatrove's per-task entry point) routes the logs before the task starts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import datatrove.executor.base as executor_base
import datatrove.utils.logging as datatrove_logging
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.io import DataFolder
from loguru import logger

CONSOLE_LEVEL = "WARNING"
TASK_LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"


def console_logger() -> None:
    """The console handler outside a task: warnings and errors only."""
    logger.remove()
    logger.add(sys.stderr, level=CONSOLE_LEVEL, format=TASK_LOG_FORMAT, colorize=False)


def task_logger(logging_dir: DataFolder, rank: int, local_rank: int = 0, node_rank: int = -1) -> TextIO:
    """Datatrove's `add_task_logger` contract (the task's log file, returned open), with a quiet console."""
    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    logger.add(sys.stderr, level=CONSOLE_LEVEL if local_rank == 0 else "ERROR", format=prefix + TASK_LOG_FORMAT,
               colorize=False)
    logger.add(logfile, level="DEBUG", format=prefix + TASK_LOG_FORMAT, colorize=False)
    logger.info(f"Launching pipeline for rank={rank}")
    return logfile


def route_datatrove_logs() -> None:
    """Install the policy in this process (idempotent): datatrove looks both functions up at call time."""
    executor_base.add_task_logger = task_logger
    datatrove_logging.setup_default_logger = console_logger
    console_logger()


class LocalExecutor(LocalPipelineExecutor):
    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        route_datatrove_logs()
        return super()._run_for_rank(rank, local_rank, node_rank)


class SlurmExecutor(SlurmPipelineExecutor):
    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        route_datatrove_logs()
        return super()._run_for_rank(rank, local_rank, node_rank)


class SlurmArrayExecutor(SlurmExecutor):
    """The job array alone, without datatrove's follow-up job that merges the tasks' stats: a caller that
    consumes the tasks' outputs and then removes the logging directory (tokenize) must not race it."""

    def launch_merge_stats(self) -> None:
        return None


def wait_for_completions(done: list[Path], slurm: Any, logs: Path) -> None:
    """Block until every path in `done` exists (datatrove's completion markers of a submitted SLURM chain);
    fail when the time limit passes, or when none of our jobs (`slurm.job_name` prefix) is queued any more
    for three polls in a row while markers are missing."""
    deadline = time.monotonic() + slurm.timeout_minutes * 60
    idle_polls = 0
    while not all(p.exists() for p in done):
        if time.monotonic() > deadline:
            raise RuntimeError(f"SLURM run did not finish within {slurm.timeout_minutes} minutes")
        time.sleep(slurm.poll_seconds)
        queue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True)
        ours = [line for line in queue.stdout.splitlines() if line.startswith(slurm.job_name)]
        idle_polls = idle_polls + 1 if queue.returncode == 0 and not ours else 0
        if idle_polls >= 3 and not all(p.exists() for p in done):
            raise RuntimeError(f"SLURM jobs ended but the run is incomplete; see {logs}")
