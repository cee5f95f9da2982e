"""The same corpus curated and tokenized in two different directories (at different depths) gives
byte-identical manifests and digests: they name their inputs by content, never by an absolute path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.config import RunConfig
from core.manifest import content_name, file_record, sha256_file
from data_pipeline.curate import CurateConfig
from data_pipeline.curate.pipeline import run as curate
from data_pipeline.tokenizer.train import TokenizerConfig
from data_pipeline.tokenizer.train import run as train_tokenizer
from data_pipeline.tokens.tokenize import run as tokenize
from tests.data_pipeline.curate_helpers import REPO_ROOT
from tests.data_pipeline.tokens_fixtures import hashes, tokenize_config

PLANTED = REPO_ROOT / "data_pipeline/sample_corpus/planted/planted.jsonl"


def build(root: Path, tokenizer: Path | None) -> Path:
    """Curate and tokenize the planted sample under `root` (inputs, evals and runs all inside it)."""
    (root / "input").mkdir(parents=True)
    shutil.copyfile(PLANTED, root / "input" / "planted.jsonl")
    (root / "evals").mkdir()
    (root / "evals" / "mini.jsonl").write_text(json.dumps({"id": "q1", "question": "What is seven times six?"}) + "\n")
    config = CurateConfig(
        run=RunConfig(dir=str(root / "curated")),
        sources=[{"name": "planted", "kind": "jsonl", "path": str(root / "input" / "planted.jsonl"),
                  "license": "PSF-2.0"}],
        executor={"tasks": 2, "workers": 1},
        stages={"url_filter": {"enabled": False}, "minhash": {"num_buckets": 2, "hashes_per_bucket": 4},
                "decontamination": {"evals": ["builtin", str(root / "evals")]}},
    )
    curate(config)
    if tokenizer is None:
        train_tokenizer(TokenizerConfig(run=RunConfig(dir=str(root / "tokenizer")), input=str(root / "curated"),
                                        vocab_size=400))
    else:
        shutil.copytree(tokenizer, root / "tokenizer")
    return tokenize(tokenize_config(root / "tokens", root / "curated", root / "tokenizer", shard_tokens=2000))


def test_same_corpus_in_two_directories_gives_identical_manifests(tmp_path):
    first = build(tmp_path / "one", None)
    second = build(tmp_path / "elsewhere" / "two", tmp_path / "one" / "tokenizer")
    for name in ("curated/manifest.json", "tokens/manifest.json", "tokens/croissant.json"):
        a, b = (tmp_path / "one" / name).read_bytes(), (tmp_path / "elsewhere" / "two" / name).read_bytes()
        assert a == b, name
        assert str(tmp_path).encode() not in a, f"{name} holds an absolute path"
    assert hashes(first) == hashes(second)  # every token shard, index and provenance file
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["config"]["input"] == f"sha256:{sha256_file(tmp_path / 'one' / 'curated' / 'manifest.json')}"
    assert manifest["config"]["tokenizer"].startswith("sha256:")
    assert len(manifest["shards"]) >= 2
    curation = json.loads((tmp_path / "one" / "curated" / "manifest.json").read_text())
    record = file_record(tmp_path / "one" / "input" / "planted.jsonl", tmp_path / "one" / "input")
    assert curation["sources"]["planted"]["input"] == content_name([record])  # the source, named by content
    report = json.loads((tmp_path / "one" / "curated" / "reports" / "decontamination.json").read_text())
    assert report["documents_removed"] == 1  # the planted HumanEval prompt: the builtin evals were used
