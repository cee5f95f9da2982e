"""Expert parallelism on real gloo process groups: the dispatch, training parity with one process (FSDP2 and
HSDP), kill and resume, checkpoints moved between EP degrees, and the config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atom.cli import main
from pretrain.checkpoint import KILL_AT, list_checkpoints
from pretrain.config import PretrainConfig
from pretrain.expert_parallel import dispatch_plan
from pretrain.metrics import read_jsonl, reproducible
from pretrain.stage import run as pretrain
from tests.pretrain.fixtures import build_token_dataset
from tests.pretrain.fixtures import tiny_pretrain as _tiny_pretrain
from tests.pretrain.test_distributed import close, torchrun
from tests.pretrain.test_trainer import final_weights, losses

REPO = Path(__file__).resolve().parents[2]
# Final weights, per tensor: |w_ep - w_one| / |w_one|. The same sums in another order (fp32) move Adam's
# update most where a gradient is near eps (rare tokens' embedding rows): measured 4.9e-5 at most for EP
# over 20 steps at lr 1e-2 (4-rank FSDP without EP: 9e-6); a dispatch or gradient-scaling bug is >1e-2.
WEIGHT_TOLERANCE = 2e-4


@pytest.mark.parametrize("received, perm, counts", [
    # 2 sources x 3 local experts. Source-major rows: src0 -> e0: [0], e1: [1, 2]; src1 -> e0: [3, 4], e2: [5]
    ([[1, 2, 0], [2, 0, 1]], [0, 3, 4, 1, 2, 5], [3, 2, 1]),
    ([[0, 0], [1, 2]], [0, 1, 2], [1, 2]),  # a source that sends nothing
    ([[2, 0], [1, 0]], [0, 1, 2], [3, 0]),  # an expert that receives nothing
    ([[0, 3], [2, 0], [0, 1]], [3, 4, 0, 1, 2, 5], [2, 4]),  # three sources
    ([[0, 0], [0, 0]], [], [0, 0]),  # nothing at all
])
def test_dispatch_permutation_goldens(received, perm, counts):
    """Received rows are source-major; the permutation makes them expert-major for the grouped GEMM."""
    got_perm, got_counts = dispatch_plan(torch.tensor(received))
    assert got_perm.tolist() == perm and got_counts.tolist() == counts


def tiny_pretrain(data: Path, run_dir: Path, steps: int, ep: int = 1, **kw) -> PretrainConfig:
    """One micro-batch per rank and step on 4 ranks; the aux-loss-free bias moves, so it is compared too."""
    cfg = _tiny_pretrain(data, run_dir, steps=steps, **kw)
    cfg.schedule.kind = "constant"
    cfg.trainer.micro_batch = 1
    assert cfg.model.moe is not None
    cfg.model.moe.score_func = "sigmoid"
    cfg.model.moe.bias_update_rate = 1e-3
    if ep > 1:
        cfg.parallel.backend = "fsdp2"
        cfg.parallel.ep = ep
    return cfg


def weights_close(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    worst = max(((wa[k] - wb[k]).norm() / wa[k].norm()).item() for k in wa if wa[k].norm() > 0)
    assert worst <= WEIGHT_TOLERANCE, worst
    biases = [k for k in wa if k.endswith("expert_bias")]
    assert biases and all((wa[k] - wb[k]).abs().max() <= 1e-6 for k in biases)
    assert any(wa[k].abs().sum() > 0 for k in biases)  # the bias did move


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def single(dataset: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    pretrain(tiny_pretrain(dataset, run_dir, steps=20))
    return run_dir


@pytest.mark.distributed
@pytest.mark.parametrize("nproc", [2, 4])
def test_ep_layer_matches_one_rank(nproc: int):
    """Outputs, input and expert gradients of one MoE layer (balanced, skewed, a rank sending nothing)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "tests.pretrain.ep_worker"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and f"EP OK {nproc}" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ep_dispatch_path_on_cuda_over_nccl():
    """One GPU, EP group of one: the counts and rows still go through NCCL all_to_all_single."""
    n = min(torch.cuda.device_count(), 2)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                           "-m", "tests.pretrain.ep_worker"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ATOM_EP_DEVICE": "cuda"})
    assert proc.returncode == 0 and f"EP OK {n}" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("nproc, ep, shard_size", [(2, 2, None), (4, 4, None), (4, 2, 2)],
                         ids=["ep2-fsdp2", "ep4-fsdp4", "ep2-hsdp2x2"])
def test_ep_training_matches_one_process(dataset: Path, single: Path, tmp_path: Path, nproc: int, ep: int,
                                         shard_size: int | None):
    run_dir = tmp_path / "ep"
    cfg = tiny_pretrain(dataset, run_dir, steps=20, ep=ep)
    cfg.parallel.shard_size = shard_size
    torchrun(cfg, tmp_path, nproc=nproc)
    assert close(losses(single), losses(run_dir)), (losses(single), losses(run_dir))
    weights_close(single, run_dir)
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert f'"moe/layer1/received_rank{nproc - 1}"' in metrics  # rows each rank's experts received


@pytest.mark.distributed
@pytest.mark.slow
def test_ep_kill_one_rank_and_restart_equals_uninterrupted(dataset: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    steps = 16
    whole = tiny_pretrain(dataset, tmp_path / "whole", steps=steps, ep=2, checkpoint_interval=5)
    torchrun(whole, tmp_path)
    killed = tiny_pretrain(dataset, tmp_path / "killed", steps=steps, ep=2, checkpoint_interval=5)
    with monkeypatch.context() as patch:
        patch.setenv(KILL_AT, "before_step:8@1")
        proc = torchrun(killed, tmp_path, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=300) != 0
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[0].step == 5
    torchrun(killed, tmp_path)
    wa, wb = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in ("train_tokens.jsonl", "summary.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    # the metrics too, expert load summed over ranks and rows received per rank included
    assert [reproducible(r) for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [
        reproducible(r) for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]


@pytest.mark.distributed
@pytest.mark.slow
def test_ep2_checkpoint_resumes_on_one_and_on_four_ranks_and_exports(dataset: Path, single: Path, tmp_path: Path):
    """Checkpoints hold each expert tensor under its global shape: an EP 2 run continues on one process, on
    two ranks with plain FSDP2, and with EP 4 on four ranks, on the same loss curve; a model loads from it
    for HF export."""
    from pretrain.checkpoint_state import load_model_weights
    from pretrain.model.hf_export import export_hf, import_hf
    from pretrain.model.transformer import Transformer

    for name, nproc, ep in (("to-one", 1, 1), ("to-fsdp2", 2, 1), ("to-four", 4, 4)):
        run_dir = tmp_path / name
        cfg = tiny_pretrain(dataset, run_dir, steps=8, ep=2)
        torchrun(cfg, tmp_path)
        model = Transformer(cfg.model)
        load_model_weights(model, list_checkpoints(run_dir / "checkpoints")[0].path)
        exported = import_hf(export_hf(model, tmp_path / f"hf-{name}")).state_dict()
        saved = final_weights(run_dir)
        assert all(torch.equal(exported[k], saved[k]) for k in exported if k in saved)
        cfg.trainer.max_steps = 20
        if nproc == 1:
            cfg.parallel.backend, cfg.parallel.ep = "none", 1
            pretrain(cfg)
        else:
            cfg.parallel.ep = ep
            torchrun(cfg, tmp_path, nproc=nproc)
        assert "resumed from" in (run_dir / "logs" / "pretrain.log").read_text()
        assert close(losses(single), losses(run_dir)), (name, losses(single), losses(run_dir))
        weights_close(single, run_dir)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.ep=3"], "parallel.ep=3 does not divide model.moe.n_experts=8"),
    (["parallel.ep=2", "parallel.backend=deepspeed"], "parallel.ep=2 needs parallel.backend=fsdp2"),
    (["parallel.ep=2", "model.moe.backend=loop"], "parallel.ep=2 needs model.moe.backend grouped_mm"),
    (["parallel.ep=2", "model.moe=null", "model.mlp_hidden=256"], "parallel.ep=2 needs a Mixture-of-Experts"),
])
def test_bad_ep_settings_are_one_line_errors(overrides, message, tmp_path, capsys):
    config = REPO / "configs" / "quickstart" / "pretrain.yaml"
    args = [f"--set={o}" for o in (f"run.dir={tmp_path / 'run'}", "parallel.backend=fsdp2", *overrides)]
    assert main(["pretrain", str(config), *args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("world, shard, message", [
    (6, None, "parallel.ep=4 does not divide the world size 6"),
    (8, 2, "parallel.ep=4 does not divide parallel.shard_size=2"),
])
def test_ep_against_the_world_size_fails_before_any_process_group(world, shard, message, dataset, tmp_path):
    from core.config import ConfigError
    from pretrain.parallel import check_layout

    cfg = tiny_pretrain(dataset, tmp_path / "run", steps=4, ep=4)
    cfg.data.global_batch = 24
    cfg.parallel.shard_size = shard
    with pytest.raises(ConfigError, match=message):
        check_layout(cfg, world)
