"""The data path after tokenization at 1x, 10x and 100x: wall time and peak RSS per stage per size.

Each size is a token dataset of N documents written by the tokenize stage's own `ShardWriter` (the real
shard, index, provenance and manifest format), with document lengths drawn from the per-document token
counts of real text (Python stdlib docstrings under a 512-token BPE trained here, clipped to
[16, 1024] tokens to bound the disk this takes) and token ids from that text's unigram frequencies.
Two sources (the two docstring kinds, with their own lengths). Every stage runs in a fresh process, so
its peak RSS is its own:

    mix            `atom mix` of the dataset (75/25 by source, half of its tokens)
    audit-dataset  `atom audit` of the dataset (hashes, counts, provenance recounted)
    audit-mixture  `atom audit` of the mixture (and, through it, the dataset)
    held-out       the trainer's data setup on the mixture: span index, windows, held-out documents
    loader-index   the span index and one epoch's window order

Prints each stage's seconds, seconds per 1M documents, peak RSS, and their growth against the smallest
size (goals: time per document within 1.5x, peak RSS under 2x from 1x to 100x).

    .venv/bin/python -m bench.scale
    .venv/bin/python -m bench.scale --docs 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("mix", "audit-dataset", "audit-mixture", "held-out", "loader-index")
SEQ_LEN = 512
BATCH_DOCS = 50_000
SHARD_TOKENS = 50_000_000


def real_statistics(work: Path) -> tuple[dict[str, np.ndarray], np.ndarray, Path]:
    """Per-source document token counts and unigram frequencies of real text, and its tokenizer."""
    sys.path.insert(0, str(ROOT))
    from core.config import RunConfig
    from data_pipeline.tokenizer.train import TokenizerConfig
    from data_pipeline.tokenizer.train import run as train
    from data_pipeline.tokens.encoding import encode_documents, open_tokenizer
    from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run

    docs = stdlib_documents(200)
    curated = write_curated_run(work / "curated", docs)
    tok_dir = train(TokenizerConfig(run=RunConfig(dir=str(work / "tokenizer")), input=str(curated), vocab_size=512))
    tokenizer, info, _ = open_tokenizer(tok_dir, "auto")
    lengths: dict[str, list[int]] = {}
    counts = np.zeros(info["vocab_size"], np.int64)
    for source in sorted({d["source"] for d in docs}):
        texts = [d["text"] for d in docs if d["source"] == source]
        tokens, lens = encode_documents(tokenizer, texts, info["eos_id"], np.uint16)
        lengths[source] = np.clip(lens, 16, 1024)
        counts += np.bincount(tokens, minlength=len(counts))
    return {k: np.asarray(v) for k, v in lengths.items()}, counts / counts.sum(), tok_dir


def build_dataset(root: Path, n_docs: int, lengths: dict[str, np.ndarray], unigram: np.ndarray,
                  tok_dir: Path) -> Path:
    """A token dataset of `n_docs` documents in the tokenize stage's format, written by its writers."""
    import shutil

    import pyarrow as pa

    from core.config import RunConfig
    from core.rundir import write_json
    from data_pipeline.croissant import write_croissant
    from data_pipeline.tokenizer.train import FILES
    from data_pipeline.tokens import format as fmt
    from data_pipeline.tokens.curated import CuratedRun
    from data_pipeline.tokens.tokenize import (
        ShardWriter,
        TokenizeConfig,
        _dataset_manifest,
        _ProvenanceWriter,
        open_tokenizer,
    )

    _, info, dtype = open_tokenizer(tok_dir, "auto")
    (root / fmt.TOKENS_DIR).mkdir(parents=True)
    (root / fmt.TOKENIZER_DIR).mkdir()
    for name in FILES:
        shutil.copyfile(tok_dir / name, root / fmt.TOKENIZER_DIR / name)
    provenance = _ProvenanceWriter(root / fmt.PROVENANCE)
    writer = ShardWriter(root, dtype, SHARD_TOKENS, provenance)
    rng = np.random.default_rng(0)
    names = sorted(lengths)
    sources: dict[str, dict[str, Any]] = {n: {"tokens": 0, "docs": 0, "licenses": {"PSF-2.0": 0}} for n in names}
    for first in range(0, n_docs, BATCH_DOCS):
        n = min(BATCH_DOCS, n_docs - first)
        which = rng.integers(0, len(names), n)
        lens = np.empty(n, np.int64)
        for k, name in enumerate(names):
            mine = which == k
            lens[mine] = rng.choice(lengths[name], int(mine.sum()))
        tokens = rng.choice(len(unigram), int(lens.sum()), p=unigram).astype(np.uint16)
        tokens[np.cumsum(lens) - 1] = info["eos_id"]
        ids = [f"doc/{first + i}" for i in range(n)]
        meta = pa.table({"id": ids, "source": [names[k] for k in which], "license": ["PSF-2.0"] * n,
                         "url": [f"https://docs.example/{i}" for i in ids], "source_version": ["1"] * n})
        writer.add(tokens, lens, meta)
        for k, name in enumerate(names):
            mine = which == k
            sources[name]["tokens"] += int(lens[mine].sum())
            sources[name]["docs"] += int(mine.sum())
            sources[name]["licenses"]["PSF-2.0"] += int(mine.sum())
    writer.close()
    provenance.close()
    curated = CuratedRun(root, [], {}, "0" * 64, n_docs)
    config = TokenizeConfig(run=RunConfig(dir=str(root)), input="synthetic", tokenizer=str(tok_dir),
                            shard_tokens=SHARD_TOKENS)
    manifest = _dataset_manifest(root, config, curated, tok_dir, info, dtype, writer, provenance, sources)
    write_json(root / fmt.MANIFEST, manifest)
    write_croissant(root, manifest)
    return root


def stage(name: str, dataset: Path, mixture: Path) -> None:
    """Run one stage here (a fresh process) and print its wall time and peak RSS."""
    from core.config import RunConfig

    start = time.perf_counter()
    if name == "mix":
        from data_pipeline.mixture.mix import MixConfig
        from data_pipeline.mixture.mix import run as mix
        from data_pipeline.tokens.reader import TokenDataset

        total = TokenDataset(dataset).n_tokens
        sources = sorted(json.loads((dataset / "manifest.json").read_text())["sources"])
        mix(MixConfig(run=RunConfig(dir=str(mixture), overwrite=True), datasets=[str(dataset)],
                      target_tokens=total // 2, sources={sources[0]: {"ratio": 0.75}, sources[1]: {"ratio": 0.25}}))
    elif name.startswith("audit"):
        from data_pipeline.audit import audit_data

        report = audit_data(dataset if name == "audit-dataset" else mixture)
        assert report.ok, report.render()
    elif name == "held-out":
        from data_pipeline.tokens.reader import open_tokens
        from pretrain.dataset import TrainingData

        TrainingData(open_tokens(mixture), SEQ_LEN, 64)
    else:
        from data_pipeline.tokens.reader import open_tokens
        from pretrain.data import TokenWindows, WindowOrder

        windows = TokenWindows(open_tokens(mixture).spans(), SEQ_LEN)
        WindowOrder(windows.n_windows, 64, 0).epoch_order(0)
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": seconds, "rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM: per address space, unlike ru_maxrss, which Linux carries over
    from the parent across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, dataset: Path, mixture: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--stage", name, "--dataset", str(dataset),
                           "--mixture", str(mixture)], cwd=ROOT, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{name} on {dataset} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mixture", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage(args.stage, args.dataset, args.mixture)
        return
    import shutil

    work = Path(tempfile.mkdtemp(prefix="atom-bench-scale-"))
    try:
        lengths, unigram, tok_dir = real_statistics(work / "real")
        results: dict[int, dict[str, dict[str, float]]] = {}
        for n in args.docs:
            dataset = build_dataset(work / f"dataset-{n}", n, lengths, unigram, tok_dir)
            mixture = work / f"mixture-{n}"
            results[n] = {name: measure(name, dataset, mixture) for name in STAGES}
            shutil.rmtree(dataset)
            shutil.rmtree(mixture)
            print(f"{n:>9,} documents: " + ", ".join(f"{k} {v['seconds']:.1f} s / {v['rss_mib']:.0f} MiB"
                                                      for k, v in results[n].items()), flush=True)
        base = args.docs[0]
        print(f"\n{'stage':14s} {'docs':>10s} {'s':>8s} {'s/1M docs':>10s} {'x per doc':>9s} {'RSS MiB':>8s} "
              f"{'x RSS':>6s}")
        for name in STAGES:
            for n in args.docs:
                r, b = results[n][name], results[base][name]
                per, per_base = r["seconds"] / n * 1e6, b["seconds"] / base * 1e6
                print(f"{name:14s} {n:10,d} {r['seconds']:8.2f} {per:10.1f} {per / per_base:9.2f} "
                      f"{r['rss_mib']:8.0f} {r['rss_mib'] / b['rss_mib']:6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
