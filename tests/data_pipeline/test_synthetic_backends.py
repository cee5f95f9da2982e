"""Generation backends for real: a local model directory in-process, an unreachable endpoint, and a live
OpenAI-compatible server (`transformers serve`) on localhost serving a tiny random-init model."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from atom.cli import main
from core.config import RunConfig
from data_pipeline.synthetic import stage as synth
from data_pipeline.synthetic.backends import (
    EndpointBackend,
    EndpointError,
    LocalBackend,
    Request,
    Sampling,
    directory_sha256,
)
from data_pipeline.synthetic.problems import generate_problems
from data_pipeline.synthetic.sampling import rejection_sample
from data_pipeline.synthetic.stage import SynthConfig
from data_pipeline.tokens.curated import open_curated
from evaluation.verify import CORRECT, verify
from tests.data_pipeline.synthetic_fixtures import (
    ScriptedBackend,
    Server,
    free_port,
    launch_server,
    tiny_model,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLING = {"max_new_tokens": 12, "temperature": 0.8, "top_p": 0.95}


LIVE_TEST = "test_endpoint_backend_against_live_transformers_serve"
_SERVER: dict[str, Server] = {}


@pytest.fixture(scope="module")
def model(tmp_path_factory, request):
    """The tiny model; when the live-server test is selected, its server starts booting right away (it takes
    ~10-30 s) so that it comes up while the in-process tests run. Killed at teardown whatever happens."""
    built = tiny_model(tmp_path_factory)
    if any(item.name == LIVE_TEST for item in request.session.items):
        _SERVER["server"] = launch_server(built[0], tmp_path_factory.mktemp("serve") / "serve.log")
    yield built
    server = _SERVER.pop("server", None)
    if server is not None:
        server.stop()


@pytest.fixture
def server(model) -> Server:
    if "server" not in _SERVER:
        _SERVER["server"] = launch_server(model[0], Path(model[0]).parent / "serve.log")
    return wait_ready(_SERVER["server"])


def local_config(run_dir: Path, model_dir: Path, curated: Path, **kw) -> SynthConfig:
    return SynthConfig(
        run=RunConfig(dir=str(run_dir), seed=1), problems={"count": 4, "generators": ["arithmetic", "linear"]},
        backend={"kind": "local", "model_dir": str(model_dir)}, sampling=SAMPLING,
        rejection={"samples_per_problem": 2},
        rephrase={"input": str(curated), "max_documents": 3, "max_passage_chars": 300, "min_length_ratio": 0.0},
        **kw)


def test_local_backend_traces_and_rephrasings(model, tmp_path):
    model_dir, _, curated = model
    run = synth.run(local_config(tmp_path / "a", model_dir, curated))
    records = pq.read_table(run / "synthetic_records.parquet").to_pylist()
    traces = [r for r in records if r["kind"] == "trace"]
    rephrased = [r for r in records if r["kind"] == "rephrase"]
    assert len(traces) == 8 and len(rephrased) == 6  # 4 problems x 2 attempts; 3 documents x 2 styles
    for r in records:
        assert r["backend_kind"] == "local" and r["backend_model"] == str(model_dir)
        assert r["backend_model_sha256"] == directory_sha256(model_dir)
        assert json.loads(r["sampling"]) == SAMPLING and r["response"] is not None
    # a random model does not write verified traces: every attempt is rejected, and counted
    assert all(not r["accepted"] and r["status"] in ("wrong", "malformed") for r in traces)

    source = {row["id"]: row for row in pq.read_table(curated / "curated").to_pylist()}
    first3 = list(source)[:3]
    assert sorted({r["source_doc_id"] for r in rephrased}) == sorted(first3)
    assert {r["template"] for r in rephrased} == {"rephrase/wikipedia", "rephrase/qa"}
    for r in rephrased:
        assert r["source_url"] == source[r["source_doc_id"]]["url"]
        assert r["generator"] == "rephrase" and r["generator_version"] == 1
    docs = pq.read_table(run / "curated").to_pylist() if (run / "curated" / "part-00000.parquet").exists() else []
    kept = {r["doc_id"]: r for r in rephrased if r["kept"]}
    assert len(docs) == len(kept)
    for doc in docs:
        r = kept[doc["id"]]
        assert doc["source"] == "synthetic-rephrase" and doc["license"] == source[r["source_doc_id"]]["license"]
        assert doc["url"] == f"synthetic://atom/{r['template']}?source_id={quote(r['source_doc_id'], safe='')}"
        assert doc["language"] == source[r["source_doc_id"]]["language"]

    # in-process generation is seeded per request: same seed, same text, whatever ran before
    backend = LocalBackend(model_dir)
    req = [Request([{"role": "user", "content": "Compute 2 + 3."}], seed) for seed in (5, 6, 5)]
    texts = backend.generate(req, Sampling(12, 0.8, 0.95))
    assert texts[0] == texts[2] != texts[1]
    assert backend.describe() == {"kind": "local", "model": str(model_dir),
                                  "model_sha256": directory_sha256(model_dir), "endpoint": ""}


def test_endpoint_unreachable_is_a_clear_error_after_bounded_retries(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = EndpointBackend(url, "m", retries=2, backoff_s=0.01, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(EndpointError, match=re.escape(f"{url}/chat/completions") + r": endpoint unreachable after 3"):
        backend.generate([Request([{"role": "user", "content": "hi"}], 0)], Sampling(4, 0.0, 1.0))
    assert backend.requests_made == 3 and time.monotonic() - start < 10

    run_dir = tmp_path / "never"
    code = main(["synth", str(REPO / "configs" / "data" / "synth_rejection.yaml"), "--set", f"run.dir={run_dir}",
                 "--set", f"backend.base_url={url}", "--set", "backend.retries=1", "--set", "backend.backoff_s=0.01",
                 "--set", "rephrase=null"])
    err = capsys.readouterr().err
    assert code == 2 and f"{url}/models" in err and "unreachable after 2 attempt(s)" in err
    assert not run_dir.exists()  # nothing written


def test_missing_api_key_env_is_named(monkeypatch):
    monkeypatch.delenv("ATOM_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(Exception, match="ATOM_TEST_NO_SUCH_KEY"):
        EndpointBackend("http://127.0.0.1:1/v1", "m", api_key_env="ATOM_TEST_NO_SUCH_KEY")


@pytest.mark.slow
def test_endpoint_backend_against_live_transformers_serve(model, server, tmp_path):
    _, _, curated = model
    try:
        config = SynthConfig(
            run=RunConfig(dir=str(tmp_path / "run"), seed=3),
            problems={"count": 5, "generators": ["arithmetic", "sequence", "unit_conversion"]},
            backend={"kind": "endpoint", "base_url": server.base_url, "model": server.model, "retries": 1,
                     "backoff_s": 0.1, "timeout_s": 60, "concurrency": 2},
            sampling=SAMPLING, rejection={"samples_per_problem": 2},
            rephrase={"input": str(curated), "max_documents": 2, "max_passage_chars": 200, "min_length_ratio": 0.0,
                      "styles": ["qa"]})
        run = synth.run(config)

        # requests made: the server logged every chat completion the stage asked for
        posts = server.log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')
        assert posts == 5 * 2 + 2
        records = pq.read_table(run / "synthetic_records.parquet").to_pylist()
        assert len(records) == 12
        for r in records:  # responses recorded, with who wrote them and how
            assert r["response"] is not None and r["backend_kind"] == "endpoint"
            assert r["backend_endpoint"] == server.base_url and r["backend_model"] == server.model
            assert json.loads(r["sampling"]) == SAMPLING and r["sample_seed"] is not None
        traces = [r for r in records if r["kind"] == "trace"]
        # verification results recorded: the random model's answers are rejected, and counted
        assert all(r["status"] in ("wrong", "malformed") and not r["accepted"] and r["reason"] for r in traces)
        manifest = json.loads((run / "manifest.json").read_text())
        stats = manifest["records"]["by_kind"]["trace"]
        assert stats["attempted"] == 10 and stats["accepted"] + stats["rejected"] == 10 and stats["accepted"] == 0
        malformed = sum(r["status"] == "malformed" for r in records)
        assert manifest["quarantine"] == {"malformed_output": malformed}
        if malformed:
            assert len((run / "quarantine" / "malformed.jsonl").read_text().splitlines()) == malformed
        assert manifest["backend"] == {"kind": "endpoint", "model": server.model, "model_sha256": "",
                                       "endpoint": server.base_url}
        assert {r["source_doc_id"] for r in records if r["kind"] == "rephrase"} <= set(
            pq.read_table(curated / "curated").column("id").to_pylist())
        if (run / "curated" / "part-00000.parquet").exists():
            open_curated(run)

        # the same plumbing accepts a "model" that writes the reference trace
        problems = generate_problems(5, 3, ["arithmetic", "sequence", "unit_conversion"], [1, 2, 3])
        accepted = rejection_sample(problems, ScriptedBackend(problems, ["correct"]), Sampling(12, 0.8, 0.95), 3,
                                    samples_per_problem=2, keep_per_problem=1)
        assert all(r.accepted and r.status == CORRECT for r in accepted) and len(accepted) == 10
        assert sum(r.drop_reason is None for r in accepted) == 5
        assert all(verify(p.trace(), p.answer, p.unit).correct for p in problems)

        # a model name the server does not serve: a clear error with the server's reason, no retry loop
        wrong = EndpointBackend(server.base_url, "not-served", retries=3, backoff_s=0.01)
        with pytest.raises(EndpointError, match="HTTP 400.*pinned"):
            wrong.generate([Request([{"role": "user", "content": "hi"}], 0)], Sampling(4, 0.0, 1.0))
        assert wrong.requests_made == 1
    finally:
        server.stop()
    assert server.process.poll() is not None
