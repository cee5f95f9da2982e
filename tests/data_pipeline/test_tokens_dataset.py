"""Tokenized datasets: exact round trip, provenance lookup, determinism, reader, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import ConfigError
from data_pipeline.tokenizer.train import load_tokenizer
from data_pipeline.tokens.format import choose_dtype
from data_pipeline.tokens.reader import TokenDataset, open_tokens
from data_pipeline.tokens.tokenize import run as tokenize
from tests.data_pipeline.tokens_fixtures import built, copy_docs, hashes, tokenize_config, write_curated_run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


def test_every_document_decodes_back_to_its_curated_text(data):
    ds = TokenDataset(data["dataset"])
    tok = load_tokenizer(data["dataset"] / "tokenizer")
    docs = copy_docs()
    assert ds.n_docs == len(docs) and len(ds.shards) >= 3 and ds.dtype == "uint16"
    for i, doc in enumerate(docs):
        tokens = ds.doc_tokens(i)
        assert tokens[-1] == ds.eos_id
        assert ds.eos_id not in tokens[:-1]  # "<|endoftext|>" inside a text is not an end of document
        assert tok.decode(tokens[:-1].tolist(), skip_special_tokens=False) == doc["text"]
        ref = ds.document(i)
        assert (ref.id, ref.source, ref.license, ref.url) == (doc["id"], doc["source"], doc["license"], doc["url"])


def test_global_token_index_maps_to_its_document(data):
    ds = TokenDataset(data["dataset"])
    prov = pq.read_table(data["dataset"] / "provenance.parquet").to_pydict()
    rng = np.random.default_rng(0)
    probes = {0, ds.n_tokens - 1, *rng.integers(0, ds.n_tokens, 200).tolist()}
    for s in ds.shards:  # shard edges
        probes |= {s.token_offset, s.token_offset + s.n_tokens - 1}
    for t in sorted(probes):
        ref = ds.locate(t)
        assert ref.token_start <= t < ref.token_end
        assert prov["id"][ref.doc_index] == ref.id
    with pytest.raises(IndexError):
        ds.locate(ds.n_tokens)
    # the stream read through the reader equals the shards back to back, and spans cover it
    spans = ds.spans()
    assert sum(s.n_tokens for s in spans) == ds.n_tokens
    whole = np.concatenate([np.fromfile(s.path, dtype="<u2") for s in spans])
    assert np.array_equal(ds.read(0, ds.n_tokens), whole)
    assert np.array_equal(ds.read(99_990, 40), whole[99_990:100_030])


def test_shards_are_datatrove_format(data):
    ds = TokenDataset(data["dataset"])
    for i, shard in enumerate(ds.shards):
        ends = np.fromfile(shard.index_path, dtype="<u8")
        assert len(ends) == shard.n_docs and ends[-1] == shard.n_tokens
        assert isinstance(ds.tokens(i), np.memmap)  # never a whole-shard load
    manifest = json.loads((data["dataset"] / "manifest.json").read_text())
    assert manifest["schema"] == "atom.tokens/1"
    assert manifest["curation"]["stages"][0]["name"] == "read"
    assert set(manifest["sources"]) == {"stdlib-api-docs", "stdlib-module-docs"}
    assert sum(s["tokens"] for s in manifest["sources"].values()) == manifest["n_tokens"]
    text = (data["dataset"] / "manifest.json").read_text()
    assert str(data["base"]) not in text  # inputs are recorded relative to the dataset directory


def test_rebuild_gives_identical_files(data, tmp_path):
    first = hashes(data["dataset"])
    again = tokenize(tokenize_config(tmp_path / "again", data["curated"], data["tokenizer"]))
    assert hashes(again) == first
    # and again in place, after deleting the outputs
    for name in ("tokens", "provenance.parquet", "manifest.json", "croissant.json"):
        path = again / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert hashes(tokenize(tokenize_config(tmp_path / "again", data["curated"], data["tokenizer"]))) == first


def _expect_error(tmp_path, curated, tokenizer, match, **kw):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        tokenize(tokenize_config(out, curated, tokenizer, **kw))
    assert not out.exists(), "a failed check must not write anything"


def test_missing_column(data, tmp_path):
    docs = copy_docs()[:10]
    curated = write_curated_run(tmp_path / "c", docs, n_files=1,
                                columns=("id", "text", "source", "url", "source_version", "language"))
    _expect_error(tmp_path, curated, data["tokenizer"], r"missing column\(s\) license")


@pytest.mark.parametrize("column", ["source", "license", "id"])
def test_empty_source_license_or_id(data, tmp_path, column):
    docs = copy_docs()[:10]
    docs[3][column] = ""
    _expect_error(tmp_path, write_curated_run(tmp_path / "c", docs, n_files=1), data["tokenizer"],
                  f"column '{column}' is empty in 1 document")


def test_no_documents_duplicate_ids_and_tampered_input(data, tmp_path):
    _expect_error(tmp_path, write_curated_run(tmp_path / "empty", [], n_files=1), data["tokenizer"], "no documents")
    docs = copy_docs()[:10]
    docs[5]["id"] = docs[4]["id"]
    _expect_error(tmp_path, write_curated_run(tmp_path / "dup", docs, n_files=1), data["tokenizer"], "unique")
    curated = write_curated_run(tmp_path / "tampered", copy_docs()[:10], n_files=1)
    pq.write_table(pa.table({c: pa.array(["x"], pa.string()) for c in
                             ("id", "text", "source", "license", "url", "source_version", "language")}),
                   curated / "curated" / "part-00000.parquet")
    _expect_error(tmp_path, curated, data["tokenizer"], "does not match its manifest")


def test_license_outside_allow_list(data, tmp_path):
    _expect_error(tmp_path, data["curated"], data["tokenizer"], "PSF-2.0", allow_licenses=["MIT"])


def test_vocab_larger_than_dtype(data, tmp_path):
    from tokenizers import Tokenizer, models

    big = tmp_path / "bigtok"
    big.mkdir()
    vocab = {f"t{i}": i for i in range(70_000)}
    vocab["<|endoftext|>"] = 70_000
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(big / "tokenizer.json"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(data["tokenizer"] / name, big / name)
    _expect_error(tmp_path, data["curated"], big, "70001 ids does not fit dtype uint16", dtype="uint16")
    assert choose_dtype(70_001) == "uint32" and choose_dtype(65_536) == "uint16"


def test_open_tokens_dispatches(data):
    assert isinstance(open_tokens(data["dataset"] / "manifest.json"), TokenDataset)
    with pytest.raises(ConfigError):
        open_tokens(data["curated"] / "curated")


@pytest.mark.parametrize("stage,config", [("tokenizer", "tokenizer.yaml"), ("tokenize", "tokenize.yaml"),
                                          ("mix", "mix.yaml")])
def test_shipped_configs_validate(stage, config, capsys):
    from pathlib import Path

    from atom.cli import main

    path = Path(__file__).resolve().parents[2] / "configs" / "data" / config
    assert main([stage, str(path), "--dry-run"]) == 0
    assert f"# plan: {stage} would" in capsys.readouterr().out


def test_special_tokens_in_text_encodes_chat_markers_as_their_ids(data, tmp_path):
    ds = TokenDataset(tokenize(tokenize_config(tmp_path / "chat", data["curated"], data["tokenizer"],
                                               special_tokens_in_text=True)))
    tok = load_tokenizer(data["tokenizer"])
    marked = next(i for i, d in enumerate(copy_docs()) if "<|im_start|>" in d["text"])
    tokens = ds.doc_tokens(marked).tolist()
    assert tok.token_to_id("<|im_start|>") in tokens and tok.token_to_id("<think>") in tokens
    plain = TokenDataset(data["dataset"]).doc_tokens(marked).tolist()
    assert tok.token_to_id("<|im_start|>") not in plain  # the default keeps markers in web text as text
