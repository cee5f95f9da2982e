"""`atom submit` against the real two-node local SLURM cluster: HSDP across both nodes, and a time limit.

- HSDP: `--nodes 2` with 2 ranks per node and `parallel.shard_size=2` (replicate across the nodes, shard
  within each) trains a few steps; its 4-rank checkpoint then resumes in one plain process
  (`parallel.backend=none`, more steps) and continues the loss curve of an uninterrupted one-process run.
- Time limit: a job with `--time=2` and the profile's warning signal (`--signal=B:USR1@30`) is told to
  stop before its end, checkpoints, requeues itself, resumes and finishes; every batch is consumed once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch.distributed.checkpoint import FileSystemReader

from pretrain.train_manifest import read_train_manifest
from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain
from tests.slurm.helpers import REPO, attempts, job_log, steps_done, submit, wait_done, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HSDP_STEPS = 6  # trained on 2 nodes x 2 ranks
TOTAL_STEPS = 10  # after the resume in one process


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("hsdp-data"))


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pretrain_local(config: Path) -> subprocess.Popen[str]:
    """`atom pretrain CONFIG` as one plain process (no torchrun, no SLURM)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-m", "atom", "pretrain", str(config)], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


def finish(proc: subprocess.Popen[str], timeout: int = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def loss_by_step(run_dir: Path) -> dict[int, float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def trainer_state(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())


def test_hsdp_two_nodes_then_resume_on_one_process(slurm_cluster, dataset: Path, jobs_file: Path,
                                                    tmp_path: Path):
    base = tiny_pretrain(dataset, tmp_path / "hsdp", steps=HSDP_STEPS, checkpoint_interval=3)
    base.trainer.micro_batch = 1  # global_batch 4 = 4 ranks x 1 (and 4 accumulated micro-batches in one process)
    base.schedule.kind = "constant"  # the lr of a step does not depend on max_steps (6 here, 10 after resume)
    base.metrics.log_every = 1
    base.metrics.tensorboard = False
    cfg = write(tmp_path / "hsdp.yaml", base.to_dict())
    # The uninterrupted one-process reference (10 steps) runs beside the SLURM job.
    ref = base.to_dict()
    ref["run"]["dir"] = str(tmp_path / "reference")
    ref["trainer"]["max_steps"] = TOTAL_STEPS
    reference = pretrain_local(write(tmp_path / "reference.yaml", ref))

    run = tmp_path / "hsdp"
    job = submit(cfg, "pretrain", tmp_path, "--nodes", "2", "--profile-set", "procs_per_node=2",
                 "--set", "parallel.backend=fsdp2", "--set", "parallel.shard_size=2")
    assert wait_done(job, run, timeout=240) == "COMPLETED", job_log(run, job)

    # 4 ranks, two per node, all exited 0; the batch script saw both nodes
    logs = run / "slurm" / "logs"
    assert "on n[1-2], rendezvous n1:" in (logs / f"job-{job}.out").read_text()
    attempt = logs / f"{job}.0"
    names = sorted(p.name for p in attempt.iterdir())
    assert names == ["node0.out", "node1.out", *(f"rank{r}.{e}" for r in range(4) for e in ("exit", "log"))]
    assert [(attempt / f"rank{r}.exit").read_text().strip() for r in range(4)] == ["0"] * 4
    state = trainer_state(run, HSDP_STEPS)
    assert state["world_size"] == 4 and state["step"] == HSDP_STEPS
    frozen = yaml.safe_load((run / "slurm" / "config.yaml").read_text())
    assert frozen["parallel"]["backend"] == "fsdp2" and frozen["parallel"]["shard_size"] == 2
    # The 2x2 mesh shows in the checkpoint: replicas are deduplicated, so every model parameter is stored in
    # shard_size=2 pieces (a 1-D FSDP over 4 ranks would store 4, one process 1). The routers' expert_bias is
    # a buffer, which FSDP leaves whole.
    meta = FileSystemReader(str(run / "checkpoints" / f"step_{HSDP_STEPS:08d}" / "dcp")).read_metadata()
    model = {k: v for k, v in meta.state_dict_metadata.items()
             if k.startswith("app.model.") and not k.endswith(".expert_bias")}
    assert model and {len(v.chunks) for v in model.values()} == {2}, {k: len(v.chunks) for k, v in model.items()}
    embed = model["app.model.embed.weight"]
    assert sorted(tuple(c.offsets) for c in embed.chunks) == [(0, 0), (embed.size[0] // 2, 0)]

    # Resume the 4-rank HSDP checkpoint in one plain process, with more steps.
    resumed = dict(frozen)
    resumed["trainer"] = {**frozen["trainer"], "max_steps": TOTAL_STEPS}
    resumed["parallel"] = {**frozen["parallel"], "backend": "none", "shard_size": None}
    finish(pretrain_local(write(tmp_path / "resume.yaml", resumed)))
    finish(reference)

    log = (run / "logs" / "pretrain.log").read_text()
    ckpt = run / "checkpoints" / f"step_{HSDP_STEPS:08d}"
    assert f"resumed from {ckpt} at step {HSDP_STEPS}" in log, log
    assert trainer_state(run, TOTAL_STEPS)["world_size"] == 1
    assert json.loads((run / "summary.json").read_text())["steps"] == TOTAL_STEPS
    _, records = read_train_manifest(run / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(TOTAL_STEPS))  # each batch once, across the resume
    got, want = loss_by_step(run), loss_by_step(tmp_path / "reference")
    assert sorted(got) == sorted(want) == list(range(1, TOTAL_STEPS + 1))
    assert all(math.isfinite(v) for v in got.values())
    # HSDP on 4 ranks and one process differ only in the order of reductions: the same curve, before and
    # after the resume.
    for step in range(1, TOTAL_STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-3), (step, got, want)


def test_time_limit_warning_checkpoints_requeues_and_finishes(slurm_cluster, dataset: Path, jobs_file: Path,
                                                              tmp_path: Path):
    """`--time=2` with `--signal=B:USR1@30`: SLURM sends the warning 60-90 s into the job (its timer runs
    every 30 s). Whatever the machine's speed, the first attempt cannot finish before it: once training
    has begun, the test freezes the rank (SIGSTOP) until the batch shell reports the warning, then lets
    it go on (SIGCONT). The rank must then checkpoint, the job requeue, and the next attempt finish."""
    steps = STEPS_CUT_BY_LIMIT
    run = tmp_path / "limited"
    cfg = tiny_pretrain(dataset, run, steps=steps, checkpoint_interval=100_000)
    cfg.trainer.eval_every = None
    cfg.metrics.log_every = 100
    cfg.metrics.tensorboard = False
    cfg.metrics.plot = False
    job = submit(write(tmp_path / "limited.yaml", cfg.to_dict()), "pretrain", tmp_path,
                 "--profile-set", "time=00:02:00", "--profile-set", "requeue.warn_seconds=30",
                 "--profile-set", "requeue.max_requeues=3")
    script = (run / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --time=00:02:00" in script and "#SBATCH --signal=B:USR1@30" in script
    batch_log = run / "slurm" / "logs" / f"job-{job}.out"
    wait_for(lambda: steps_done(run) >= 3, "attempt 0 training", timeout=180)
    ranks = rank_pids(run / "slurm" / "config.yaml")
    assert len(ranks) == 1, ranks
    os.kill(ranks[0], signal.SIGSTOP)
    try:
        wait_for(lambda: batch_log.exists() and "atom-job: stop requested" in batch_log.read_text(),
                 "SLURM's time-limit warning", timeout=150)
    finally:
        os.kill(ranks[0], signal.SIGCONT)
    state = wait_done(job, run, timeout=330)
    assert state == "COMPLETED", job_log(run, job)

    outcomes = [r[3] for r in attempts(run, job)]
    assert len(outcomes) >= 2 and outcomes[-1] == "completed", (outcomes, job_log(run, job))
    assert set(outcomes[:-1]) == {"preempted"}, outcomes  # stopped by the warning, never killed by the limit
    text = batch_log.read_text()
    assert "atom-job: stop requested" in text and "TIME LIMIT" not in text, text
    log = (run / "logs" / "pretrain.log").read_text()
    assert log.count("stopped at step") == len(outcomes) - 1 and log.count("resumed from") == len(outcomes) - 1
    stopped = int(log.split("stopped at step ")[1].split()[0])
    assert 0 < stopped < steps
    assert f"resumed from {run / 'checkpoints' / f'step_{stopped:08d}'} at step {stopped}" in log
    assert json.loads((run / "summary.json").read_text())["steps"] == steps
    _, records = read_train_manifest(run / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(steps))  # no batch twice, none skipped


# The first attempt is held until the warning (see the test), so the count only sets how long the later
# attempts train: ~10 s at ~30 steps/s on an idle machine; a loaded one may be preempted once more,
# which also passes (max_requeues=3).
STEPS_CUT_BY_LIMIT = 300


def rank_pids(config: Path) -> list[int]:
    """The training ranks of a job (`python -m atom pretrain CONFIG`), not torchrun or the wrappers."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[1:5] == ["-m", "atom", "pretrain", str(config)]:
            found.append(int(proc.name))
    return found
