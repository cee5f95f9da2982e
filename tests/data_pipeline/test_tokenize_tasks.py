"""`atom tokenize` as datatrove tasks: the same bytes whatever the tasks and workers; a failed task resumes."""

from __future__ import annotations

import pytest

from core.config import ConfigError
from data_pipeline.tokens import encode_tasks
from data_pipeline.tokens.tokenize import run as tokenize
from tests.data_pipeline.tokens_fixtures import hashes, stdlib_documents, tokenize_config, write_curated_run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from core.config import RunConfig
    from data_pipeline.tokenizer.train import TokenizerConfig
    from data_pipeline.tokenizer.train import run as train

    base = tmp_path_factory.mktemp("tasks")
    curated = write_curated_run(base / "curated", stdlib_documents(80), n_files=8)
    tokenizer = train(TokenizerConfig(run=RunConfig(dir=str(base / "tokenizer")), input=str(curated), vocab_size=512))
    one = tokenize(tokenize_config(base / "one-task", curated, tokenizer, shard_tokens=9_000, batch_size=7))
    return curated, tokenizer, one


def test_four_tasks_on_two_workers_write_the_bytes_of_one_task(inputs, tmp_path):
    curated, tokenizer, one = inputs
    many = tokenize(tokenize_config(tmp_path / "four", curated, tokenizer, shard_tokens=9_000, batch_size=7,
                                    executor={"tasks": 4, "workers": 2}))
    skip = ("config.yaml", "logs", "inputs.json")
    assert hashes(many, skip) == hashes(one, skip)  # shards, indices, provenance, manifest, Croissant
    assert len([p for p in (many / "tokens").glob("*.ds")]) > 3
    assert not (many / "work").exists()  # the parts are gone once the shards hold them


def test_a_failed_task_resumes_without_redoing_finished_parts(inputs, tmp_path, monkeypatch):
    """One process (workers 1), 4 tasks over 8 files: task 2 fails after its first file; the rerun encodes
    only the files no task finished, and the output is the one-task run's."""
    curated, tokenizer, one = inputs
    cfg = tokenize_config(tmp_path / "resumed", curated, tokenizer, shard_tokens=9_000, batch_size=7,
                          executor={"tasks": 4, "workers": 1})
    monkeypatch.setenv(encode_tasks.FAIL_TASK, "2")
    with pytest.raises(RuntimeError, match="test of resumption"):
        tokenize(cfg)
    parts = tmp_path / "resumed" / "work" / "parts"
    finished = sorted(p.stem for p in parts.glob("*.done"))
    assert finished and len(finished) < 8 and not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.delenv(encode_tasks.FAIL_TASK)
    encoded: list[str] = []
    original = encode_tasks.encode_file
    monkeypatch.setattr(encode_tasks, "encode_file", lambda *a, **k: (encoded.append(a[2]), original(*a, **k)))
    tokenize(cfg)
    assert sorted(encoded) == sorted(set(encode_tasks.part_name(i) for i in range(8)) - set(finished))
    skip = ("config.yaml", "logs", "inputs.json")
    assert hashes(tmp_path / "resumed", skip) == hashes(one, skip)


def test_a_part_that_disagrees_with_its_lengths_is_refused(inputs, tmp_path, monkeypatch):
    """A truncated token part (a disk that filled up, a foreign file) is named, not laid into shards."""
    curated, tokenizer, _ = inputs
    cfg = tokenize_config(tmp_path / "bad", curated, tokenizer, executor={"tasks": 2, "workers": 1})
    monkeypatch.setenv(encode_tasks.FAIL_TASK, "1")
    with pytest.raises(RuntimeError):
        tokenize(cfg)
    monkeypatch.delenv(encode_tasks.FAIL_TASK)
    part = tmp_path / "bad" / "work" / "parts" / "00000.tokens"
    part.write_bytes(part.read_bytes()[:-2])
    with pytest.raises(ConfigError, match=r"00000\.tokens: \d+ tokens, its lengths say \d+"):
        tokenize(cfg)
    assert not (tmp_path / "bad" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_encode_tasks_as_a_slurm_job_array_write_the_same_bytes(inputs, slurm_cluster, tmp_path):
    """executor.kind=slurm: the encode tasks run as a job array on the local cluster's nodes, the merge waits
    for every task, and the dataset is byte-identical to the one-task local run."""
    curated, tokenizer, one = inputs
    run = tokenize(tokenize_config(tmp_path / "slurm", curated, tokenizer, shard_tokens=9_000, batch_size=7,
                                   executor={"kind": "slurm", "tasks": 3, "workers": 2,
                                             "slurm": {"partition": "debug", "poll_seconds": 1,
                                                       "timeout_minutes": 10}}))
    skip = ("config.yaml", "logs", "inputs.json")
    assert hashes(run, skip) == hashes(one, skip)
    assert not (run / "work").exists()


def test_a_slurm_executor_that_would_not_wait_is_refused():
    from pydantic import ValidationError

    from data_pipeline.tokens.tokenize import TokenizeExecutorConfig

    with pytest.raises(ValidationError, match="executor.slurm.wait=false"):
        TokenizeExecutorConfig(kind="slurm", slurm={"wait": False})
