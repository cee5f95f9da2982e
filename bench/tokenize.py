"""Throughput of `atom tokenize` (read Parquet, encode, write shards + index + provenance + manifest +
Croissant) against raw `tokenizers` `Tokenizer.encode_batch` over the same texts, in the same run.

    .venv/bin/python bench/tokenize.py [--mb 8] [--vocab 32768] [--repeats 3] [--input CURATED_RUN]
        [--workers 1 2]

`--workers N ...` also times the stage with its encoding spread over N datatrove tasks and workers
(encode_tasks.py) and prints each one's ratio to one worker.

Without --input it builds a curated run from the Python stdlib's .py files on this machine (real text,
PSF-2.0) and trains a tokenizer on it first (not timed). Prints tokens/s of both and their ratio (goal:
>= 0.8x). The stage's figure includes everything the stage does, hashing and manifests included.
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib's `tokenize`, which other modules import: run as a script, its own
# folder must not be on sys.path (it would shadow the stdlib module). Put the repository root there.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from core.config import RunConfig  # noqa: E402
from core.manifest import file_record  # noqa: E402
from core.rundir import write_json  # noqa: E402


def build_curated(root: Path, max_bytes: int) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows, size = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        if size >= max_bytes:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        rel = path.relative_to(stdlib).as_posix()
        rows.append({"id": f"stdlib/{rel}", "text": text, "source": "python-stdlib", "license": "PSF-2.0",
                     "url": f"file:///{rel}", "source_version": sys.version.split()[0], "language": "en"})
        size += len(text.encode())
    (root / "curated").mkdir(parents=True)
    outputs = []
    per = 200  # several files: the stage's tasks split the curated run by file
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        path = root / "curated" / f"part-{i // per:05d}.parquet"
        pq.write_table(pa.table({k: [r[k] for r in chunk] for k in chunk[0]}), path)
        outputs.append(file_record(path, root))
    write_json(root / "manifest.json", {"schema": "atom.curation/1", "sources": {"python-stdlib": {}},
                                        "stages": [], "quarantine": {}, "outputs": outputs,
                                        "config_sha256": ""})
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8, help="MB of stdlib text when no --input")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--input", help="an existing curated run instead of the stdlib corpus")
    parser.add_argument("--tokenizer", help="an existing tokenizer directory")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="also time N tasks on N workers")
    args = parser.parse_args()

    from data_pipeline.tokenizer.train import TokenizerConfig
    from data_pipeline.tokenizer.train import run as train
    from data_pipeline.tokens.curated import open_curated
    from data_pipeline.tokens.encoding import open_tokenizer
    from data_pipeline.tokens.tokenize import TokenizeConfig
    from data_pipeline.tokens.tokenize import run as tokenize

    work = Path(tempfile.mkdtemp(prefix="atom-bench-tokenize-"))
    try:
        curated = Path(args.input) if args.input else build_curated(work / "curated_run", int(args.mb * 1e6))
        tok_dir = Path(args.tokenizer) if args.tokenizer else train(TokenizerConfig(
            run=RunConfig(dir=str(work / "tokenizer")), input=str(curated), vocab_size=args.vocab,
            max_train_chars=20_000_000))
        run = open_curated(curated)
        texts = [t for _, b in run.batches(args.batch_size, columns=("text",)) for t in b.column("text").to_pylist()]
        n_bytes = sum(len(t.encode()) for t in texts)
        tokenizer, info, _ = open_tokenizer(tok_dir, "auto")

        raw, fast, ours, n_tokens = [], [], [], 0
        spread: dict[int, list[float]] = {}
        for r in range(args.repeats):
            t0 = time.perf_counter()
            count = 0
            for i in range(0, len(texts), args.batch_size):
                count += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i:i + args.batch_size]))
            raw.append(time.perf_counter() - t0)
            if hasattr(tokenizer, "encode_batch_fast"):
                t0 = time.perf_counter()
                for i in range(0, len(texts), args.batch_size):
                    sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts[i:i + args.batch_size]))
                fast.append(time.perf_counter() - t0)
            n_raw = count + len(texts)  # + one EOS per document, as the stage writes
            out = work / f"tokens-{r}"
            t0 = time.perf_counter()
            tokenize(TokenizeConfig(run=RunConfig(dir=str(out)), input=str(curated), tokenizer=str(tok_dir),
                                    batch_size=args.batch_size))
            ours.append(time.perf_counter() - t0)
            n_tokens = sum(p.stat().st_size for p in (out / "tokens").glob("*.ds")) // 2
            assert n_tokens == n_raw, (n_tokens, n_raw)
            shutil.rmtree(out)
            for n in args.workers:
                t0 = time.perf_counter()
                tokenize(TokenizeConfig(run=RunConfig(dir=str(out)), input=str(curated), tokenizer=str(tok_dir),
                                        batch_size=args.batch_size, executor={"tasks": n, "workers": n}))
                spread.setdefault(n, []).append(time.perf_counter() - t0)
                shutil.rmtree(out)
        raw_tps = n_tokens / statistics.median(raw)
        our_tps = n_tokens / statistics.median(ours)
        print(f"corpus: {len(texts)} documents, {n_bytes / 1e6:.1f} MB, {n_tokens} tokens "
              f"(vocab {info['vocab_size']}), batch {args.batch_size}, median of {args.repeats}")
        print(f"raw tokenizers encode_batch : {raw_tps:12,.0f} tokens/s  ({statistics.median(raw):.2f} s)")
        if fast:
            fast_tps = n_tokens / statistics.median(fast)
            print(f"raw encode_batch_fast       : {fast_tps:12,.0f} tokens/s  ({statistics.median(fast):.2f} s)")
        print(f"atom tokenize (whole stage) : {our_tps:12,.0f} tokens/s  ({statistics.median(ours):.2f} s)")
        print(f"ratio vs encode_batch       : {our_tps / raw_tps:.2f}x  (goal >= 0.8x)")
        if fast:
            print(f"ratio vs encode_batch_fast  : {our_tps / fast_tps:.2f}x  (what the stage encodes with)")
        for n, times in spread.items():
            tps = n_tokens / statistics.median(times)
            print(f"atom tokenize, {n} worker(s)   : {tps:12,.0f} tokens/s  ({statistics.median(times):.2f} s), "
                  f"{tps / our_tps:.2f}x the default (1 task)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
