"""The training manifest: which tokens each optimizer step consumed.

`train_tokens.jsonl` has one header record (step 0) naming the token stream (its spans: shard path,
sha256, token range, source), the window length, seed, global batch and the order's definition, then
one record per step: the global batch index and token count. Window w of the stream covers stream
tokens [w*L, w*L+L+1); batch b's windows are `pretrain.data.DataLoader.global_windows(b)` (a numpy
PCG64 permutation seeded with [seed, epoch] of the training windows). From these, any step's tokens
map through the spans to shard offsets and, via the dataset's provenance table, to documents.
On resume the file is cut back to the checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from core.manifest import code_version
from core.manifest_model import ManifestError, ManifestModel, VersionedManifest, describe

TRAIN_MANIFEST = "train_tokens.jsonl"
SCHEMA = "atom.train_tokens/1"
ORDER_DEFINITION = ("windows [w*L, w*L+L+1) of the concatenated spans; held_out = every window reading a token of any "
                    "occurrence of a held-out document (held_out_documents: [start, end) of their first occurrences); "
                    "training windows = all minus held_out; "
                    "epoch e order = train_windows[numpy.random.default_rng([seed, e]).permutation(n_train)]; "
                    "global batch b = order[(b % per_epoch)*B : (b % per_epoch + 1)*B] of epoch b // per_epoch; "
                    "rank r of W takes rows [r*B/W, (r+1)*B/W)")


class TokenStream(ManifestModel):
    """The dataset or mixture trained on, pinned by its manifest's digest, and the windows held out of it."""

    path: str
    manifest_sha256: str
    schema_: str = Field(alias="schema")
    n_tokens: int
    tokenizer_sha256: str | None
    held_out: list[int]  # windows never trained on
    held_out_documents: list[list[int]]  # [start, end) token ranges of the held-out documents
    held_out_keys: list[str] = []  # the held-out documents' keys, 16 hex digits (absent in the earliest runs)


class TrainHeader(VersionedManifest):
    """Line 1 of train_tokens.jsonl (step 0): the stream and everything that fixes the window order."""

    SCHEMAS: ClassVar[tuple[str, ...]] = (SCHEMA,)

    step: Literal[0]
    schema_: Literal["atom.train_tokens/1"] = Field(alias="schema")
    code_version: str
    stream: TokenStream
    seq_len: int
    seed: int
    global_batch: int
    batches_per_epoch: int
    order: str


class StepRecord(ManifestModel):
    """One optimizer step: the global batch index it consumed and its token count."""

    step: int = Field(ge=1)
    batch: int = Field(ge=0)
    tokens: int = Field(ge=0)


class TrainManifest:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write_header(self, stream: dict[str, Any], cfg: Any, loader: Any) -> None:
        header = TrainHeader.parse({"step": 0, "schema": SCHEMA, "code_version": code_version(), "stream": stream,
                                    "seq_len": cfg.data.seq_len, "seed": cfg.run.seed,
                                    "global_batch": cfg.data.global_batch,
                                    "batches_per_epoch": loader.batches_per_epoch, "order": ORDER_DEFINITION},
                                   f"{self.path} being written")
        self.path.write_text(json.dumps(header.to_json_dict(), sort_keys=True) + "\n")

    def record(self, step: int, batch: int, tokens: int) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(StepRecord(step=step, batch=batch, tokens=tokens).to_json_dict(),
                                    sort_keys=True) + "\n")


def read_train_manifest(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the step records, each validated (ManifestError names the file, the line and the key,
    or the schema version); returned as the dicts written, for the window arithmetic that reads them."""
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line]
    if not lines:
        raise ManifestError(f"{path}: empty (no header line)")
    records = []
    for n, line in lines:
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise ManifestError(f"{path} line {n}: not valid JSON ({exc})") from None
    header = TrainHeader.parse(records[0], f"{path} line {lines[0][0]}")
    for (n, _), record in zip(lines[1:], records[1:], strict=True):
        try:
            StepRecord.model_validate(record)
        except ValidationError as exc:
            raise ManifestError(f"{path} line {n} ({SCHEMA} step record): {describe(exc)}") from None
    return header.to_json_dict(), records[1:]
