"""On-disk layout of a tokenized dataset (schema atom.tokens/1).

    manifest.json          what the dataset is: shards, counts, sources, licenses, tokenizer, config
    croissant.json         the same, as Croissant 1.0 JSON-LD (for dataset catalogues)
    tokenizer/             a copy of the tokenizer files that produced the tokens
    tokens/00000.ds        flat little-endian uint16 (or uint32) token ids, end-of-document token after
                           every document: datatrove's `.ds` format, readable by its loaders
    tokens/00000.ds.index  uint64 cumulative document ends within the shard (datatrove's `.ds.index`)
    provenance.parquet     one row per document in token order: id, source, license, url,
                           source_version, shard, token_start, token_end (global, end exclusive)

Global token positions run over the shards in manifest order. Nothing hashed holds a timestamp or an
absolute path: the recorded config names its inputs by content (`manifest.content_name`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.config import ConfigError

DATASET_SCHEMA = "atom.tokens/1"
MIXTURE_SCHEMA = "atom.mixture/1"
MANIFEST = "manifest.json"
CROISSANT = "croissant.json"
TOKENIZER_DIR = "tokenizer"
TOKENS_DIR = "tokens"
PROVENANCE = "provenance.parquet"
INDEX_SUFFIX = ".index"
PROVENANCE_ROW_GROUP = 65536
DTYPES: dict[str, type[np.unsignedinteger]] = {"uint16": np.uint16, "uint32": np.uint32}

PROVENANCE_SCHEMA = pa.schema([
    ("doc_index", pa.int64()),
    ("id", pa.string()),
    ("source", pa.string()),
    ("license", pa.string()),
    ("url", pa.string()),
    ("source_version", pa.string()),
    ("shard", pa.string()),
    ("token_start", pa.int64()),
    ("token_end", pa.int64()),
])
# A mixture's sequence.parquet: one row per document in training order (written by mixture.mix).
SEQUENCE_COLUMNS = {
    "position": "int64", "dataset": "int32", "doc_index": "int64", "id": "string", "source": "string",
    "license": "string", "epoch": "int32", "n_tokens": "int64", "mixture_start": "int64",
}


def shard_name(i: int) -> str:
    return f"{TOKENS_DIR}/{i:05d}.ds"


def choose_dtype(vocab_size: int, requested: str = "auto") -> str:
    """uint16 when every id fits, else uint32; a requested dtype too small for the vocab is an error."""
    if requested == "auto":
        return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"
    if requested not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {requested!r}")
    limit = int(np.iinfo(DTYPES[requested]).max) + 1
    if vocab_size > limit:
        raise ConfigError(
            f"tokenizer vocab of {vocab_size} ids does not fit dtype {requested} (at most {limit} ids); "
            "use dtype: uint32 or auto"
        )
    return requested


# A mixture (schema atom.mixture/1) references documents of tokenized datasets instead of copying
# tokens: sequence.npy is one record per document in training order (memory-mappable), and
# sequence.parquet the same documents with their ids, sources and licenses, for people and Croissant.
SEQUENCE_ARRAY = "sequence.npy"
SEQUENCE_TABLE = "sequence.parquet"
SEQUENCE_DTYPE = np.dtype([
    ("dataset", "<u2"),  # index into the mixture manifest's `datasets`
    ("shard", "<u4"),  # index into that dataset's `shards`
    ("start", "<u8"),  # first token of the document within the shard
    ("length", "<u4"),  # tokens of the document, EOS included
    ("doc", "<u8"),  # document index within the dataset (row of its provenance table)
    ("epoch", "<u4"),  # 0 for a document's first appearance, 1 for its first repetition, ...
    ("end", "<u8"),  # cumulative end of this document in the mixture's token stream
])
