"""How long a checkpoint stops training: synchronous save vs `checkpoint.async_save`, in the same run.

    python -m bench.checkpoint [--d-model 768] [--layers 8] [--repeats 3]

Builds an MoE model (default about 0.4B parameters; AdamW state included, about 5 GB on disk), takes one
optimizer step so the optimizer state exists, then saves it through the trainer's `Checkpointer` and
engine state: synchronously, and asynchronously. For each it reports the time the training loop is
blocked (what `save` costs the step it lands on) and, for async, the time until the checkpoint is complete
in the background. The ratio blocked(sync) / blocked(async) is what async checkpointing buys.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from pretrain.checkpoint import CheckpointConfig, Checkpointer
from pretrain.checkpoint_state import DCP_DIR, TrainState
from pretrain.model.config import MoEConfig, MoEModelConfig
from pretrain.model.transformer import Transformer


def build(d_model: int, layers: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    cfg = MoEModelConfig(vocab_size=32768, d_model=d_model, n_layers=layers, n_heads=12, n_kv_heads=4,
                         mlp_hidden=4 * d_model, max_seq_len=256,
                         moe=MoEConfig(n_experts=16, top_k=2, expert_hidden=2 * d_model))
    torch.manual_seed(0)
    model = Transformer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = model(torch.randint(0, 32768, (1, 32)))
    (out.logits.float().mean() + out.aux_loss).backward()
    optimizer.step()
    return model, optimizer, cfg.num_params()


def bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    model, optimizer, n_params = build(args.d_model, args.layers)
    app = {"app": TrainState(model, optimizer)}
    root = Path(args.dir or tempfile.mkdtemp(prefix="atom-bench-ckpt-"))
    print(f"model: {n_params / 1e6:.0f}M parameters; writing under {root}")

    results: dict[str, list[tuple[float, float]]] = {"sync": [], "async": []}
    for r in range(args.repeats):
        for mode in ("sync", "async"):
            target = root / mode
            shutil.rmtree(target, ignore_errors=True)
            ckpt = Checkpointer(target, CheckpointConfig(keep_last=1, async_save=mode == "async"))

            def write(d: Path, mode: str = mode):
                if mode == "sync":
                    return dcp.save(app, checkpoint_id=str(d / DCP_DIR))
                return dcp.async_save(app, checkpoint_id=str(d / DCP_DIR))

            start = time.perf_counter()
            ckpt.save(r + 1, write, {"step": r + 1}, blocking=mode == "sync")
            blocked = time.perf_counter() - start
            ckpt.wait()
            total = time.perf_counter() - start
            results[mode].append((blocked, total))
            size = bytes_under(target)
    shutil.rmtree(root, ignore_errors=True)

    best = {mode: min(runs) for mode, runs in results.items()}
    print(f"checkpoint size: {size / 2**30:.2f} GiB (model + AdamW state, COMPLETE.json hashes included)")
    print(f"{'mode':<6} {'training blocked (s)':>22} {'until complete (s)':>20}")
    for mode, (blocked, total) in best.items():
        print(f"{mode:<6} {blocked:>22.2f} {total:>20.2f}")
    print(f"async blocks training {best['sync'][0] / best['async'][0]:.1f}x less than a synchronous save")


if __name__ == "__main__":
    main()
