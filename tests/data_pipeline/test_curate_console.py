"""`atom data` shows the user atom's summary and datatrove's warnings; datatrove's per-task INFO stays in the
task log files."""

from __future__ import annotations

import subprocess
import sys

from datatrove.io import get_datafolder
from loguru import logger

from data_pipeline.curate.executors import route_datatrove_logs, task_logger
from tests.data_pipeline.curate_helpers import REPO_ROOT

DATATROVE_INFO = ("Launching pipeline", "PIPELINE", "Processing done", "Stats:", "📉")


def test_atom_data_console_holds_no_datatrove_task_logs(tmp_path):
    """Two tasks on two forkserver workers (the path where each task process sets up its own logging) and the
    exact-dedup phases: the console has atom's summary only, every task's log file has datatrove's lines."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "atom", "data", str(REPO_ROOT / "configs/data/sample.yaml"),
         "--set", f"run.dir={run}", "--set", "executor.tasks=2", "--set", "executor.workers=2",
         "--set", "stages.minhash.enabled=false"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"atom data: {run}\n")
    console = proc.stdout + proc.stderr
    assert [line for line in console.splitlines() if any(s in line for s in DATATROVE_INFO)] == []
    assert " | INFO " not in console and " | SUCCESS " not in console
    task_logs = sorted((run / "work" / "logs").glob("*/logs/task_*.log"))
    assert len(task_logs) >= 4  # the curate phase's two tasks and the dedup phases
    for log in task_logs:
        text = log.read_text(encoding="utf-8")
        assert "Launching pipeline" in text and "Processing done" in text, log


def test_task_console_keeps_warnings_and_the_file_keeps_everything(tmp_path, capsys):
    route_datatrove_logs()
    logfile = task_logger(get_datafolder(str(tmp_path)), rank=3)
    logger.info("an info line")
    logger.warning("a warning the user must see")
    logfile.close()
    err = capsys.readouterr().err
    assert "a warning the user must see" in err and "an info line" not in err
    text = (tmp_path / "logs" / "task_00003.log").read_text(encoding="utf-8")
    assert "Launching pipeline for rank=3" in text and "an info line" in text and "a warning the user" in text
