"""Checkpoints are atomic, verified on resume, and pruned by the retention policy."""

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from pretrain.checkpoint import COMPLETE, CheckpointConfig, Checkpointer, list_checkpoints
from pretrain.checkpoint_state import TrainState


def writer(model, opt):
    return lambda d: dcp.save({"app": TrainState(model, opt)}, checkpoint_id=str(d / "dcp"))


def make(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    return model, opt


def test_save_load_roundtrip_and_retention(tmp_path: Path):
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=2, keep_every=2))
    model, opt = make(0)
    for step in (1, 2, 3, 4, 5):
        ckpt.save(step, writer(model, opt), {"step": step})
    assert [c.step for c in list_checkpoints(tmp_path)] == [5, 4, 2]
    other, other_opt = make(1)
    state = ckpt.load(ckpt.latest_valid(),
                      lambda d: dcp.load({"app": TrainState(other, other_opt)}, checkpoint_id=str(d / "dcp")))
    assert state == {"step": 5}
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])


def test_truncated_checkpoint_falls_back_with_a_warning(tmp_path: Path):
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=3))
    model, opt = make(0)
    ckpt.save(1, writer(model, opt), {"step": 1})
    ckpt.save(2, writer(model, opt), {"step": 2})
    victim = max((p for p in (tmp_path / "step_00000002").rglob("*.distcp")), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-10])
    warnings: list[str] = []
    assert ckpt.latest_valid(warn=warnings.append).step == 1
    assert len(warnings) == 1 and "step_00000002" in warnings[0] and "damaged" in warnings[0]


def test_partial_directory_is_never_loaded(tmp_path: Path):
    ckpt = Checkpointer(tmp_path, CheckpointConfig())
    model, opt = make(0)
    ckpt.save(1, writer(model, opt), {"step": 1})
    (tmp_path / "step_00000002.partial" / "dcp").mkdir(parents=True)  # a save killed mid-write
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]
    (tmp_path / "step_00000001" / COMPLETE).unlink()
    assert ckpt.latest_valid(warn=lambda m: None) is None


def test_async_save_writes_the_state_of_its_step_while_training_goes_on(tmp_path: Path):
    """The state is copied when `save` returns; later updates do not leak into the checkpoint, which stays
    `.partial` (invisible to resume) until the next save or `wait` completes it."""
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=3, async_save=True))
    model, opt = make(0)
    at_save = {k: v.clone() for k, v in model.state_dict().items()}

    def write_async(d: Path):
        return dcp.async_save({"app": TrainState(model, opt)}, checkpoint_id=str(d / "dcp"))

    ckpt.save(1, write_async, {"step": 1}, blocking=False)
    assert list_checkpoints(tmp_path) == [] and (tmp_path / "step_00000001.partial").is_dir()
    with torch.no_grad():  # training goes on and changes the weights in place
        for p in model.parameters():
            p.add_(1.0)
    assert ckpt.wait() == tmp_path / "step_00000001"
    assert ckpt.wait() is None  # nothing pending
    assert [c.step for c in list_checkpoints(tmp_path)] == [1] and ckpt.latest_valid().step == 1
    other, other_opt = make(1)
    ckpt.load(ckpt.latest_valid(),
              lambda d: dcp.load({"app": TrainState(other, other_opt)}, checkpoint_id=str(d / "dcp")))
    assert all(torch.equal(at_save[k], v) for k, v in other.state_dict().items())
    ckpt.save(2, write_async, {"step": 2}, blocking=False)
    ckpt.save(3, write_async, {"step": 3}, blocking=False)  # completes 2 before starting 3
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 1]
    ckpt.wait()
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 2, 1]
