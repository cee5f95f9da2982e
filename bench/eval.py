"""Multiple-choice scoring throughput: `atom eval` vs lm-evaluation-harness's `hf` backend, same release and items.

One run scores the same instances of one task with both, interleaved round by round so machine noise hits
both alike, each with its model loaded once beforehand (load time is not counted): atom through its own
model (`import_hf` of the release) with shared forward rows, lm-eval through transformers' model of the
release with its own request building, batching and metrics (its task setup per call is counted: it is
part of what a user runs). Prints instances/s of each, their ratio, and the largest per-choice
log-likelihood difference.

    .venv/bin/python -m bench.eval --release runs/quickstart/release --task arc_easy:mc_5shot --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from evaluation.config import TaskConfig
from evaluation.instances import ChoiceItem
from evaluation.lm_eval_tasks import write_lm_eval_tasks
from evaluation.runner import load_items, run_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="runs/quickstart/release", help="an atom release (make quickstart)")
    parser.add_argument("--task", default="arc_easy:mc_5shot", help="a multiple-choice task of atom eval")
    parser.add_argument("--limit", type=int, default=200, help="instances scored per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    release = Path(args.release)
    if not (release / "release.json").is_file():
        raise SystemExit(f"{release}: not an atom release (run `make quickstart` or pass --release)")

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from pretrain.model.hf_export import import_hf
    from release.evaluate import codec

    task_cfg = TaskConfig(name=args.task, limit=args.limit)
    _, items = load_items(task_cfg, [])
    choice_items = [i for i in items if isinstance(i, ChoiceItem)]
    out = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    (name,), _ = write_lm_eval_tasks([(args.task, choice_items)], out)
    ours = import_hf(release).eval()
    text_codec = codec(release)
    theirs = HFLM(pretrained=str(release), dtype="float32", device="cpu", batch_size=args.batch_size)
    manager = TaskManager(include_path=str(out))
    device = torch.device("cpu")

    def atom_round() -> list[list[float]]:
        result = run_task(task_cfg, lambda t: ours(t).logits, text_codec, ours.cfg.max_seq_len, args.batch_size,
                          device, show=False)
        return [r["loglikelihoods"] for r in result.items]

    def lm_eval_round() -> list[list[float]]:
        res = simple_evaluate(model=theirs, tasks=[name], task_manager=manager, log_samples=True,
                              verbosity="ERROR")
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        return [[float(r[0][0]) for r in s["resps"]] for s in samples]

    times: dict[str, list[float]] = {"atom eval": [], "lm-eval hf": []}
    results = {}
    for _ in range(args.rounds):
        for label, fn in (("atom eval", atom_round), ("lm-eval hf", lm_eval_round)):
            start = time.perf_counter()
            results[label] = fn()
            times[label].append(time.perf_counter() - start)
    n = len(choice_items)
    rate = {label: n / min(t) for label, t in times.items()}
    diff = max(abs(a - b) for x, y in zip(results["atom eval"], results["lm-eval hf"], strict=True)
               for a, b in zip(x, y, strict=True))
    print(f"{args.task}, {n} instances, {sum(len(i.continuations) for i in choice_items)} choices, "
          f"batch {args.batch_size}, {args.threads} threads, best of {args.rounds}")
    for label in times:
        print(f"  {label:<12} {min(times[label]):8.2f} s  {rate[label]:8.1f} instances/s")
    print(f"  ratio atom / lm-eval: {rate['atom eval'] / rate['lm-eval hf']:.2f}x; "
          f"max |log-likelihood difference| {diff:.2e}")
    print(json.dumps({"task": args.task, "instances": n, "rates": rate, "max_abs_ll_diff": diff}))


if __name__ == "__main__":
    main()
