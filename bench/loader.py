"""The pretraining loader's cost against the tiny model's training step, and its memory vs shard count.

    python -m bench.loader [--shards 1 16 256] [--steps 20]

For each shard count it writes a synthetic token stream of the same total size split into that many
shard files (with document indexes), builds the loader with document masking, and times
`next_batch()`; then it times forward+backward+AdamW of the quickstart's tiny MoE on batches of the
same shape, in the same run. It prints the loader's share of a step (goal < 1%) and the process's peak
RSS growth while loading (goal: flat in the number of shards).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from data_pipeline.tokens.reader import TokenSpan
from pretrain.config import PretrainConfig
from pretrain.data import DataLoader, TokenWindows
from pretrain.model.transformer import Transformer

REPO = Path(__file__).resolve().parents[1]


def write_stream(root: Path, n_tokens: int, n_shards: int, vocab: int) -> list[TokenSpan]:
    rng = np.random.default_rng(0)
    spans = []
    per = n_tokens // n_shards
    for i in range(n_shards):
        tokens = rng.integers(1, vocab, size=per, dtype=np.uint16)
        ends = np.cumsum(rng.integers(50, 2000, size=per // 50 + 1)).astype(np.uint64)
        ends = np.append(ends[ends < per], np.uint64(per))
        path = root / f"{i:05d}.ds"
        tokens.tofile(path)
        ends.tofile(root / f"{i:05d}.ds.index")
        spans.append(TokenSpan(path, "uint16", 0, per, root / f"{i:05d}.ds.index"))
    return spans


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_loader(spans: list[TokenSpan], seq_len: int, batch: int, steps: int) -> float:
    loader = DataLoader(TokenWindows(spans, seq_len), batch, seed=0, document_masking=True)
    loader.next_batch()
    start = time.perf_counter()
    for _ in range(steps):
        loader.next_batch()
    return (time.perf_counter() - start) / steps


def time_step(cfg: PretrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.data.global_batch, cfg.data.seq_len))

    def step() -> None:
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.flatten()) + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--tokens", type=int, default=64_000_000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(PretrainConfig, REPO / "configs/quickstart/pretrain.yaml")
    seq_len, batch = cfg.data.seq_len, cfg.data.global_batch
    step_s = time_step(cfg, max(3, args.steps // 4))
    print(f"tiny MoE step ({batch} x {seq_len} tokens, {torch.get_num_threads()} threads): {step_s * 1e3:.1f} ms")
    print(f"{'shards':>7} {'loader ms/batch':>16} {'share of step':>14} {'peak RSS MiB':>13}")
    for n in args.shards:
        with tempfile.TemporaryDirectory() as tmp:
            spans = write_stream(Path(tmp), args.tokens, n, cfg.model.vocab_size)
            loader_s = time_loader(spans, seq_len, batch, args.steps)
            print(f"{n:>7} {loader_s * 1e3:>16.3f} {loader_s / step_s:>13.2%} {rss_mib():>13.0f}")


if __name__ == "__main__":
    main()
