"""A killed run restarts without redoing finished tasks and ends identical to an uninterrupted run;
the SLURM executor produces the same output as the local one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.curate.pipeline import run
from tests.data_pipeline.curate_helpers import REPO_ROOT, SAMPLE_CONFIG, read_manifest, sample_config


def curated_digests(run_dir):
    return {o["path"]: o["sha256"] for o in read_manifest(run_dir)["outputs"]}


@pytest.mark.slow
def test_killed_run_restarts_identically(sample_run, tmp_path):
    run_dir = tmp_path / "killed"
    # the console script: `python -m atom` would re-run atom/__main__.py in datatrove's forkserver
    atom = Path(sys.executable).with_name("atom")
    command = [str(atom), "data", str(SAMPLE_CONFIG), "--set", f"run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    completions = run_dir / "work" / "logs" / "filter" / "completions"
    deadline = time.monotonic() + 600
    while not (completions.is_dir() and any(completions.iterdir())):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "manifest.json").exists()
    done = sorted(p.name for p in completions.iterdir())
    finished = {p: p.stat().st_mtime_ns for p in (run_dir / "work" / "after_filters").glob("*.jsonl")
                if p.stem in done}

    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)  # same config: resumes
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "curated:" in rerun.stdout

    for path, mtime in finished.items():  # completed tasks were not run again
        assert path.stat().st_mtime_ns == mtime, path
    assert curated_digests(run_dir) == curated_digests(sample_run)
    # config_sha256 included: sources named by content, not by their paths (relative here, absolute there)
    assert read_manifest(run_dir) == read_manifest(sample_run)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_executor_matches_local(sample_run, slurm_cluster, tmp_path):
    run_dir = tmp_path / "slurm"
    config = sample_config(run_dir, "executor.kind=slurm", "executor.slurm.partition=debug",
                           "executor.slurm.poll_seconds=1", "executor.slurm.timeout_minutes=20")
    run(config)
    assert curated_digests(run_dir) == curated_digests(sample_run)
    local, slurm = read_manifest(sample_run), read_manifest(run_dir)
    assert slurm["stages"] == local["stages"] and slurm["sources"] == local["sources"]
    assert slurm["quarantine"] == local["quarantine"]
