"""Expert parallelism on gloo: all-to-all bytes per step against the theoretical volume, and step time
at ep 1, 2 and 4.

Each EP degree runs under torchrun with `ep` processes (one thread each), every rank with the same
tokens (weak scaling) through the same model; ep 1 is the model without EP, the reference of the run.
A step is forward + backward. The bytes are what the dispatch sends to other ranks (rows x d_model x
element size), forward and back, counted at the exchange; the theory for uniform routing is

    tokens x top_k x d_model x bytes x (ep - 1) / ep   per MoE layer, each way

(the `ep - 1` of every `ep` rows routed leave the rank). The router of an untrained model is close to
uniform, so measured / theory should be close to 1; a dispatch that sent rows to their own rank through
the network, or twice, would show here.

    .venv/bin/python -m bench.ep
    .venv/bin/python -m bench.ep --ep 1 2 --batch 2 --seq 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ["vocab_size=8192", "d_model=256", "n_layers=4", "n_heads=4", "n_kv_heads=2", "head_dim=64",
         "moe.n_experts=16", "moe.top_k=4", "moe.expert_hidden=256", "moe.first_k_dense=0"]


def worker(args: argparse.Namespace) -> None:
    from core.config import load_config
    from pretrain.expert_parallel import ExpertParallel, shard_experts
    from pretrain.model.config import MoEModelConfig
    from pretrain.model.transformer import Transformer

    degree = args.ep[0]
    torch.set_num_threads(1)
    if degree > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if degree > 1 else 0
    cfg = load_config(MoEModelConfig, ROOT / "configs/model/tiny_moe.yaml", [*SHAPE, f"max_seq_len={args.seq}"])
    assert cfg.moe is not None
    torch.manual_seed(0)
    model = Transformer(cfg)
    sent = [0]  # rows sent to other ranks, both directions, forward and backward
    if degree > 1:
        for moe in model.moe_layers().values():
            ep = ExpertParallel(dist.group.WORLD, cfg.moe.n_experts)
            shard_experts(moe.experts, ep)
            exchange = ep.exchange

            def counted(x, out_splits, in_splits, exchange=exchange, me=ep.rank):
                sent[0] += sum(n for j, n in enumerate(in_splits) if j != me)
                return exchange(x, out_splits, in_splits)

            ep.exchange = counted  # type: ignore[method-assign]
            moe.dispatch = ep.run
    torch.manual_seed(1 + rank)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))

    def step() -> None:
        out = model(tokens[:, :-1], targets=tokens[:, 1:])
        (out.loss + out.aux_loss + out.z_loss).backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sent[0] = 0
    times = []
    for _ in range(args.steps):
        if degree > 1:
            dist.barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    element = torch.finfo(torch.float32).bits // 8
    forward_dispatch = sent[0] / args.steps / 2  # per step: dispatch (there) and combine (back)
    layers = len(model.moe_layers())
    theory = args.batch * args.seq * cfg.moe.top_k * cfg.d_model * element * (degree - 1) / degree * layers
    result = {"ep": degree, "step_s": statistics.median(times),
              "bytes_each_way": forward_dispatch * cfg.d_model * element, "theory_each_way": theory}
    if degree > 1:
        gathered: list[dict | None] = [None] * degree
        dist.all_gather_object(gathered, result)
        if rank == 0:  # the mean over ranks (each sends its own share)
            result["bytes_each_way"] = statistics.mean(g["bytes_each_way"] for g in gathered if g)
            result["step_s"] = max(g["step_s"] for g in gathered if g)
        dist.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(result))


def run(ep: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.ep", "--worker", "--ep", str(ep), "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps)]
    if ep > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ep}",
               "-m", "bench.ep", *cmd[3:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"ep {ep} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ep", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.ep[0] != 1:
        args.ep = [1, *args.ep]  # the reference
    rows = [run(ep, args) for ep in args.ep]
    print(f"gloo, {os.cpu_count()} cores, torch {torch.__version__}; shape: {' '.join(SHAPE)}; "
          f"{args.batch}x{args.seq} tokens per rank, forward + backward, median of {args.steps} steps")
    print(f"{'ep':>3s} {'step ms':>9s} {'vs ep 1':>8s} {'MB each way':>12s} {'theory MB':>10s} "
          f"{'measured/theory':>16s}")
    for r in rows:
        ratio = f"{r['bytes_each_way'] / r['theory_each_way']:.3f}" if r["theory_each_way"] else "-"
        print(f"{r['ep']:3d} {r['step_s'] * 1e3:9.1f} {r['step_s'] / rows[0]['step_s']:7.2f}x "
              f"{r['bytes_each_way'] / 1e6:12.2f} {r['theory_each_way'] / 1e6:10.2f} {ratio:>16s}")


if __name__ == "__main__":
    main()
