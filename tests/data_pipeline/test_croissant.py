"""Croissant 1.0 export: mlcroissant validates it and loads the provenance records, checking sha256."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from tests.data_pipeline.tokens_fixtures import built

mlc = pytest.importorskip("mlcroissant")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_dataset_croissant_validates_and_loads_the_provenance(data):
    ds = mlc.Dataset(jsonld=str(data["dataset"] / "croissant.json"))
    assert not ds.metadata.ctx.issues.errors
    records = list(ds.records("documents"))
    prov = pq.read_table(data["dataset"] / "provenance.parquet").to_pylist()
    assert len(records) == len(prov)
    for rec, row in zip(records, prov, strict=True):
        assert _text(rec["documents/id"]) == row["id"]
        assert _text(rec["documents/license"]) == row["license"]
        assert rec["documents/token_end"] == row["token_end"]
    assert ds.metadata.license  # every source license, as SPDX URLs


def test_mixture_croissant_loads_the_sequence(data):
    ds = mlc.Dataset(jsonld=str(data["mixture"] / "croissant.json"))
    records = list(ds.records("sequence"))
    assert len(records) == pq.read_metadata(data["mixture"] / "sequence.parquet").num_rows


def test_load_fails_when_a_file_does_not_match_its_sha256(data, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(data["dataset"], root)
    table = pq.read_table(root / "provenance.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), root / "provenance.parquet")
    ds = mlc.Dataset(jsonld=str(root / "croissant.json"))
    with pytest.raises(Exception) as info:
        list(ds.records("documents"))
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("Hash of downloaded file" in m and "provenance.parquet" in m for m in chain), chain
