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
from typing import Any

from core.manifest import code_version

TRAIN_MANIFEST = "train_tokens.jsonl"
ORDER_DEFINITION = ("windows [w*L, w*L+L+1) of the concatenated spans; held_out = every window reading a token of any "
                    "occurrence of a held-out document (held_out_documents: [start, end) of their first occurrences); "
                    "training windows = all minus held_out; "
                    "epoch e order = train_windows[numpy.random.default_rng([seed, e]).permutation(n_train)]; "
                    "global batch b = order[(b % per_epoch)*B : (b % per_epoch + 1)*B] of epoch b // per_epoch; "
                    "rank r of W takes rows [r*B/W, (r+1)*B/W)")


class TrainManifest:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write_header(self, stream: dict[str, Any], cfg: Any, loader: Any) -> None:
        header = {"step": 0, "schema": "atom.train_tokens/1", "code_version": code_version(),
                  "stream": stream, "seq_len": cfg.data.seq_len,
                  "seed": cfg.run.seed, "global_batch": cfg.data.global_batch,
                  "batches_per_epoch": loader.batches_per_epoch, "order": ORDER_DEFINITION}
        self.path.write_text(json.dumps(header, sort_keys=True) + "\n")

    def record(self, step: int, batch: int, tokens: int) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": step, "batch": batch, "tokens": tokens}, sort_keys=True) + "\n")


def read_train_manifest(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return records[0], records[1:]
