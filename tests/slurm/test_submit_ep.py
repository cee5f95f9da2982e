"""`atom submit` of an expert-parallel run over both nodes of the real local SLURM cluster.

`--nodes 2` with 2 ranks per node and `parallel.ep=4`: every MoE layer's experts are split over all four
ranks, so the token all-to-all crosses the nodes. The job must finish, follow the loss curve of one plain
process, and store each expert tensor once under its global shape, one piece per EP rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.pretrain.fixtures import build_token_dataset, tiny_pretrain
from tests.slurm.helpers import job_log, submit, wait_done
from tests.slurm.test_submit_hsdp import finish, loss_by_step, pretrain_local, write

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("ep-data"))


def test_ep_over_two_nodes_matches_one_process(slurm_cluster, dataset: Path, jobs_file: Path, tmp_path: Path):
    base = tiny_pretrain(dataset, tmp_path / "ep", steps=STEPS, checkpoint_interval=3)
    base.trainer.micro_batch = 1
    base.metrics.log_every = 1
    base.metrics.tensorboard = False
    ref = base.to_dict()
    ref["run"]["dir"] = str(tmp_path / "reference")
    reference = pretrain_local(write(tmp_path / "reference.yaml", ref))

    run = tmp_path / "ep"
    job = submit(write(tmp_path / "ep.yaml", base.to_dict()), "pretrain", tmp_path, "--nodes", "2",
                 "--profile-set", "procs_per_node=2", "--set", "parallel.backend=fsdp2", "--set", "parallel.ep=4")
    assert wait_done(job, run, timeout=240) == "COMPLETED", job_log(run, job)
    finish(reference)

    state = json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["world_size"] == 4
    got, want = loss_by_step(run), loss_by_step(tmp_path / "reference")
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-3), (step, got, want)
    metrics = (run / "metrics.jsonl").read_text()
    assert '"moe/layer1/received_rank3"' in metrics
    meta = FileSystemReader(str(run / "checkpoints" / f"step_{STEPS:08d}" / "dcp")).read_metadata()
    experts = {k: v for k, v in meta.state_dict_metadata.items()
               if k.startswith("app.model.") and k.endswith(("gate_up_proj", "down_proj"))}
    assert base.model.moe is not None
    n_experts = base.model.moe.n_experts
    assert experts and all(v.size[0] == n_experts and len(v.chunks) == 4 for v in experts.values()), experts
