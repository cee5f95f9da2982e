"""Tokenization as datatrove tasks: each task encodes whole curated files into parts; one merge writes shards.

Encoding is the expensive part of `atom tokenize` (BPE over every character); laying tokens into shards
is a copy. So the tasks (`executor.tasks` over `executor.workers` processes, datatrove's local executor,
as curation runs) each encode the curated files i with i % tasks == rank into `work/parts/`:

    NNNNN.tokens       the file's documents' tokens back to back, EOS after each (little-endian dtype)
    NNNNN.lens.npy     each document's length (EOS included), int64
    NNNNN.meta.parquet the documents' provenance columns (id, source, license, url, source_version)
    NNNNN.done         written last: the part is complete (a killed task leaves no .done)

and the merge streams the parts in file order through the one `ShardWriter`. Shard boundaries depend only
on the token stream, never on how it was cut into tasks or batches, so the output is byte-identical
whatever the number of tasks and workers. A rerun after a kill keeps every finished part (and datatrove
skips finished tasks), so only unfinished files are encoded again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from core.config import ConfigError
from data_pipeline.tokens import format as fmt
from data_pipeline.tokens.encoding import encode_documents, open_tokenizer

WORK_DIR = "work"  # removed once the manifest is written
PARTS_DIR = f"{WORK_DIR}/parts"
LOGS_DIR = f"{WORK_DIR}/logs/encode"
META_COLUMNS = ("id", "source", "license", "url", "source_version")
FAIL_TASK = "ATOM_TOKENIZE_FAIL_TASK"  # tests: this task raises after its first part (a killed worker)


def part_name(index: int) -> str:
    return f"{index:05d}"


class EncodeFiles(PipelineStep):
    """Encode this task's curated files into parts (skipping parts already complete)."""

    name = "encode"
    type = "TOKENIZE"

    def __init__(self, files: list[str], parts_dir: str, tokenizer_dir: str, dtype: str,
                 special_tokens_in_text: bool, batch_size: int):
        super().__init__()
        self.files, self.parts_dir, self.tokenizer_dir = files, parts_dir, tokenizer_dir
        self.dtype, self.special, self.batch_size = dtype, special_tokens_in_text, batch_size

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        tokenizer, info, _ = open_tokenizer(self.tokenizer_dir, self.dtype, self.special)
        parts = Path(self.parts_dir)
        for index in range(rank, len(self.files), world_size):
            if not (parts / f"{part_name(index)}.done").is_file():
                encode_file(Path(self.files[index]), parts, part_name(index), tokenizer, info["eos_id"],
                            np.dtype(fmt.DTYPES[self.dtype]).newbyteorder("<"), self.batch_size)
                self.stat_update("files")
            if os.environ.get(FAIL_TASK) == str(rank):
                raise RuntimeError(f"{FAIL_TASK}={rank}: this task stops here (a test of resumption)")
        yield from ()


def encode_file(path: Path, parts: Path, name: str, tokenizer: Any, eos_id: int, dtype: np.dtype,
                batch_size: int) -> None:
    """One curated file's part, written under temporary names and renamed, then marked done."""
    parts.mkdir(parents=True, exist_ok=True)
    tmp = {kind: parts / f".{name}.{kind}.tmp" for kind in ("tokens", "lens", "meta")}
    lens: list[np.ndarray] = []
    meta_schema = pa.schema([(c, pa.string()) for c in META_COLUMNS])
    with open(tmp["tokens"], "wb") as out, pq.ParquetWriter(tmp["meta"], meta_schema, compression="zstd") as meta:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["text", *META_COLUMNS]):
            tokens, doc_lens = encode_documents(tokenizer, batch.column("text").to_pylist(), eos_id, dtype)
            out.write(tokens.astype(dtype, copy=False).tobytes())
            lens.append(doc_lens)
            table = pa.Table.from_batches([batch]).select(list(META_COLUMNS))
            meta.write_table(table.cast(meta_schema))
    with open(tmp["lens"], "wb") as fh:
        np.save(fh, np.concatenate(lens) if lens else np.zeros(0, np.int64), allow_pickle=False)
    for kind, final in (("tokens", ".tokens"), ("lens", ".lens.npy"), ("meta", ".meta.parquet")):
        os.replace(tmp[kind], parts / f"{name}{final}")
    (parts / f"{name}.done").write_text("")


def read_parts(parts: Path, n_files: int, dtype: str, batch_size: int
               ) -> Iterator[tuple[np.ndarray, np.ndarray, pa.Table]]:
    """(tokens, document lengths, provenance columns) of every part in file order, `batch_size` documents at
    a time (memory bounded by one batch, whatever the corpus size)."""
    np_dtype = np.dtype(fmt.DTYPES[dtype]).newbyteorder("<")
    for index in range(n_files):
        name = part_name(index)
        if not (parts / f"{name}.done").is_file():
            raise ConfigError(f"{parts / name}: part not complete after every encode task finished")
        lens = np.load(parts / f"{name}.lens.npy")
        token_file = parts / f"{name}.tokens"
        tokens = (np.memmap(token_file, dtype=np_dtype, mode="r") if token_file.stat().st_size
                  else np.zeros(0, np_dtype))
        if int(lens.sum()) != len(tokens):
            raise ConfigError(f"{token_file}: {len(tokens)} tokens, its lengths say {int(lens.sum())}")
        ends = np.cumsum(lens)
        row = 0
        for batch in pq.ParquetFile(parts / f"{name}.meta.parquet").iter_batches(batch_size=batch_size):
            n = batch.num_rows
            start = int(ends[row - 1]) if row else 0
            stop = int(ends[row + n - 1]) if n else start
            yield np.asarray(tokens[start:stop]), lens[row:row + n], pa.Table.from_batches([batch])
            row += n
        if row != len(lens):
            raise ConfigError(f"{parts / name}.meta.parquet: {row} rows, {len(lens)} document lengths")
