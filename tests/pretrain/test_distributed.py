"""Real 2-rank process groups (torchrun, gloo): FSDP2 and DeepSpeed match one process; kill and reshard."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.checkpoint import KILL_AT, list_checkpoints
from pretrain.config import PretrainConfig
from pretrain.metrics import read_jsonl, reproducible
from pretrain.stage import run as pretrain
from pretrain.train_manifest import read_train_manifest
from tests.pretrain.fixtures import build_token_dataset
from tests.pretrain.fixtures import tiny_pretrain as _tiny_pretrain
from tests.pretrain.test_fp8 import LOSS_TOLERANCE as FP8_LOSS_TOLERANCE
from tests.pretrain.test_trainer import final_weights, losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 2e-4  # fp32, different reduction order: relative difference of per-step losses


def tiny_pretrain(*args, **kwargs) -> PretrainConfig:
    """A constant learning rate, so a run extended from 8 to 12 steps follows the 12-step reference."""
    cfg = _tiny_pretrain(*args, **kwargs)
    cfg.schedule.kind = "constant"
    return cfg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("data"))


def torchrun(cfg: PretrainConfig, tmp: Path, nproc: int = 2, wait: bool = True, **popen):
    path = tmp / f"{Path(cfg.run.dir).name}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "atom", "pretrain", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOLERANCE * abs(x) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def single(dataset: Path, tmp_path_factory) -> Path:
    """The reference: one process, no sharding, 12 steps."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    pretrain(tiny_pretrain(dataset, run_dir, steps=12))
    return run_dir


@pytest.mark.parametrize("shard_size", [None, 1], ids=["fsdp", "hsdp"])
def test_fsdp2_two_ranks_match_one(dataset: Path, single: Path, tmp_path: Path, shard_size: int | None):
    """FSDP2 over both ranks, and HSDP (a 2 x 1 mesh: replicate across the ranks, shard within each)."""
    cfg = tiny_pretrain(dataset, tmp_path / "fsdp", steps=12)
    cfg.parallel.backend = "fsdp2"
    cfg.parallel.shard_size = shard_size
    torchrun(cfg, tmp_path)
    assert close(losses(single), losses(tmp_path / "fsdp")), (losses(single), losses(tmp_path / "fsdp"))
    metrics = [json.loads(x) for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s_per_rank" in m and "memory/max_rss_gib" in m for m in metrics)
    # validation splits the held-out windows over the ranks (padding the shorter one): same value
    reference = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    val = [[m["val/loss"] for m in run if "val/loss" in m] for run in (reference, metrics)]
    assert len(val[0]) == 2 and close(val[0], val[1]), val


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_saves_resumes_and_matches(dataset: Path, single: Path, tmp_path: Path, stage: int):
    run_dir = tmp_path / f"zero{stage}"
    cfg = tiny_pretrain(dataset, run_dir, steps=8)
    cfg.parallel.backend = "deepspeed"
    cfg.parallel.zero_stage = stage
    torchrun(cfg, tmp_path)
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [8, 4]
    cfg.trainer.max_steps = 12  # an allowed change: resume from step 8 and go on
    proc = torchrun(cfg, tmp_path)
    assert "resumed from" in (run_dir / "logs" / "pretrain.log").read_text(), proc.stderr[-2000:]
    assert close(losses(single), losses(run_dir)), (losses(single), losses(run_dir))


def test_kill_one_rank_and_restart_equals_uninterrupted(dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    """The killed run writes its checkpoints asynchronously (each rank in a background thread, over its own
    gloo group); the reference writes them synchronously. Rank 1 SIGKILLs itself before step 13, while step
    10's checkpoint is still being written, and torchrun tears the group down: the restart resumes from step 5.
    Weights must still be equal, bit for bit, and the records equal the uninterrupted run's."""
    steps = 40
    whole = tiny_pretrain(dataset, tmp_path / "whole", steps=steps, checkpoint_interval=5)
    whole.parallel.backend = "fsdp2"
    torchrun(whole, tmp_path)
    killed = tiny_pretrain(dataset, tmp_path / "killed", steps=steps, checkpoint_interval=5)
    killed.parallel.backend = "fsdp2"
    killed.checkpoint.async_save = True
    with monkeypatch.context() as patch:
        patch.setenv(KILL_AT, "before_step:13@1")
        proc = torchrun(killed, tmp_path, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=300) != 0
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[0].step == 5
    torchrun(killed, tmp_path)
    wa, wb = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    _, records = read_train_manifest(tmp_path / "killed" / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(steps))
    for name in ("train_tokens.jsonl", "summary.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert [reproducible(r) for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [
        reproducible(r) for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]


def test_two_rank_checkpoint_resumes_on_one_rank(dataset: Path, single: Path, tmp_path: Path):
    run_dir = tmp_path / "reshard"
    cfg = tiny_pretrain(dataset, run_dir, steps=8)
    cfg.parallel.backend = "fsdp2"
    torchrun(cfg, tmp_path)
    cfg.parallel.backend = "none"  # 2 ranks -> 1 process: an allowed change
    cfg.trainer.max_steps = 12
    pretrain(cfg)
    _, records = read_train_manifest(run_dir / "train_tokens.jsonl")
    assert [r["batch"] for r in records] == list(range(12))
    assert close(losses(single), losses(run_dir)), (losses(single), losses(run_dir))


def test_bad_layouts_fail_before_any_process_group(dataset: Path, tmp_path: Path):
    cfg = tiny_pretrain(dataset, tmp_path / "bad", steps=2)
    cfg.data.global_batch = 6  # 3 per rank on 2 ranks, not a multiple of micro_batch 2
    cfg.parallel.backend = "fsdp2"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a multiple of trainer.micro_batch" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(path), "--set", "data.global_batch=4",
                           "--set", "parallel.backend=none"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "parallel.backend=none trains one process" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(path), "--set", "parallel.zero_stage=4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "parallel.zero_stage" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(path), "--set", "data.global_batch=4",
                           "--set", "parallel.shard_size=3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "shard_size=3" in proc.stderr


def fsdp2_fp8_on_cuda(dataset: Path, run_dir: Path, fp8_all_gather: bool) -> PretrainConfig:
    """FSDP2 over NCCL, bf16 mixed precision, tensorwise FP8 linears; the FP8 all-gather on or off."""
    cfg = tiny_pretrain(dataset, run_dir, steps=8)
    cfg.trainer.device = "cuda"
    cfg.model.fp8 = {"recipe": "tensorwise"}
    cfg.parallel.backend = "fsdp2"
    cfg.parallel.mixed_precision = "bf16"
    cfg.parallel.fp8_all_gather = fp8_all_gather
    return PretrainConfig.model_validate(cfg.to_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp2_nccl_bf16_fp8_all_gather_on_one_gpu(dataset: Path, tmp_path: Path):
    """The float8 all-gather changes what FSDP2 gathers (weights cast to float8 before, with scales
    precomputed after each step), not the maths: its losses follow the same run gathering bf16 weights
    and casting them after. A stale or wrong scale would saturate or underflow the float8 weights."""
    reference, gathered = tmp_path / "bf16-gather", tmp_path / "fp8-gather"
    torchrun(fsdp2_fp8_on_cuda(dataset, reference, fp8_all_gather=False), tmp_path, nproc=1)
    torchrun(fsdp2_fp8_on_cuda(dataset, gathered, fp8_all_gather=True), tmp_path, nproc=1)
    expected, found = losses(reference), losses(gathered)
    assert len(found) == len(expected) == 4, (expected, found)  # steps 2, 4, 6, 8 (log_every 2)
    assert all(math.isfinite(x) for x in found) and found[-1] < found[0], found
    assert all(abs(a - b) <= FP8_LOSS_TOLERANCE * a for a, b in zip(expected, found, strict=True)), (expected, found)


def refused(cfg_path: Path, *overrides: str, world_size: int = 1) -> str:
    """stderr of `atom pretrain` refusing the config (exit 2, one line, no traceback)."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "atom", "pretrain", str(cfg_path),
                           *(a for o in overrides for a in ("--set", o))], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("atom pretrain: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_checkpoint_resumes_only_under_a_backend_that_reads_its_format(dataset: Path, tmp_path: Path):
    """DeepSpeed's checkpoints and DCP's (none, fsdp2) are not interchangeable: switching between the two
    families on resume is refused before any training work (the records and config stay as they were),
    with one line naming the checkpoint and both backends; a switch within DCP's family stays accepted."""
    for writer, others in (("deepspeed", ("none", "fsdp2")), ("none", ("deepspeed",))):
        run_dir = tmp_path / writer
        cfg = tiny_pretrain(dataset, run_dir, steps=2, checkpoint_interval=2)
        cfg.parallel.backend = writer
        if writer == "deepspeed":
            torchrun(cfg, tmp_path, nproc=1)
        else:
            pretrain(cfg)
        cfg_path = tmp_path / f"{writer}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
        before = {name: (run_dir / name).read_text() for name in ("config.yaml", "metrics.jsonl")}
        for other in others:
            # two ranks for fsdp2, refused before any process group (none exists to join: no torchrun)
            line = refused(cfg_path, f"parallel.backend={other}", "trainer.max_steps=4",
                           world_size=2 if other == "fsdp2" else 1)
            assert str(run_dir / "checkpoints" / "step_00000002") in line, line
            assert f"written by parallel.backend {'deepspeed' if writer == 'deepspeed' else 'none or fsdp2'}" in line
            assert f"parallel.backend={other} cannot resume" in line, line
            assert {name: (run_dir / name).read_text() for name in before} == before
        # starting a new run from the checkpoint (init_from) is refused the same way, at config time
        ckpt = run_dir / "checkpoints" / "step_00000002"
        line = refused(cfg_path, f"run.dir={tmp_path / (writer + '-child')}", f"init_from={ckpt}",
                       f"parallel.backend={others[0]}", "trainer.max_steps=4")
        assert f"{cfg_path}: init_from: " in line and not (tmp_path / (writer + "-child")).exists(), line
        assert str(ckpt) in line if writer == "deepspeed" else "none or fsdp2 only" in line, line
