"""Training-step throughput of our MoE model vs transformers' OlmoeForCausalLM of the same shape.

One run measures, interleaved round by round so machine noise hits every contender alike:
tokens/s of a full step (forward, backward, AdamW) for our model with each expert backend and for
transformers' OLMoE built from the equivalent config; the ratio to transformers; and each one's
achieved FLOP/s (our config's FLOPs per token, the same shapes for both) as a fraction of a
torch.mm peak measured in the same run.

Two shapes by default, each against transformers in the same run: `coarse` (8 experts, top-2, expert
hidden 2 x d_model) and `fine` (OLMoE's proportions: 64 experts, top-8, expert hidden d_model / 2), with
the same active expert FLOPs per token, so the cost of many small experts shows.

    .venv/bin/python -m bench.moe_step                     # CPU, fp32, both shapes
    .venv/bin/python -m bench.moe_step --shape fine --no-loop
    .venv/bin/python -m bench.moe_step --device cuda --dtype bf16 --fp8 rowwise --batch 8 --seq 2048
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.config import load_config
from pretrain.metrics import matmul_peak
from pretrain.model.config import MoEModelConfig
from pretrain.model.fp8 import convert_to_fp8
from pretrain.model.transformer import Transformer
from pretrain.optim import OptimizerConfig, build_optimizer

ROOT = Path(__file__).resolve().parents[1]
# The issue's benchmark shape: vocab 32768, d_model 256, 4 layers, 4 heads / 2 KV heads, 8 experts top-2.
BASE_SET = ["vocab_size=32768", "d_model=256", "n_layers=4", "n_heads=4", "n_kv_heads=2", "head_dim=64",
            "moe.first_k_dense=0"]
SHAPES = {
    "coarse": [*BASE_SET, "moe.n_experts=8", "moe.top_k=2", "moe.expert_hidden=512"],
    "fine": [*BASE_SET, "moe.n_experts=64", "moe.top_k=8", "moe.expert_hidden=128"],  # OLMoE-1B-7B's ratios
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HF_NAME = "transformers OlmoeForCausalLM"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def olmoe_like(cfg: MoEModelConfig, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """transformers' OlmoeForCausalLM with our config's shapes (its defaults: sdpa, grouped_mm experts)."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    assert cfg.moe is not None
    hf = OlmoeConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                     pad_token_id=None, bos_token_id=None, eos_token_id=None,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                     intermediate_size=cfg.moe.expert_hidden, num_experts=cfg.moe.n_experts,
                     num_experts_per_tok=cfg.moe.top_k, max_position_embeddings=cfg.max_seq_len,
                     rope_theta=cfg.rope.theta, rms_norm_eps=cfg.norm_eps, norm_topk_prob=cfg.moe.normalize_weights,
                     output_router_logits=True, router_aux_loss_coef=cfg.moe.aux_loss_weight,
                     tie_word_embeddings=cfg.tie_embeddings)
    return OlmoeForCausalLM(hf).to(device=device, dtype=dtype)


def step_fn(model: torch.nn.Module, tokens: torch.Tensor, hf: bool) -> Callable[[], None]:
    """One training step as each side trains: forward, loss (cross-entropy + MoE losses), backward, AdamW.

    Ours: `model(x, targets=y)` (the fused head + loss) and the trainer's `build_optimizer`. transformers:
    `model(input_ids, labels)` and the fused AdamW that its Trainer uses by default (`adamw_torch_fused`)."""
    if hf:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    else:
        opt = build_optimizer(model, OptimizerConfig(lr=1e-4))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        if hf:
            loss = model(input_ids=inputs, labels=tokens[:, :-1]).loss  # shifts labels itself; adds aux loss
        else:
            out = model(inputs, targets=targets)
            loss = out.loss + out.aux_loss + out.z_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(cfg: MoEModelConfig, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per step of every contender, per round (interleaved)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    assert cfg.moe is not None
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    contenders: dict[str, Callable[[], None]] = {}
    backends = ["grouped_mm"] if args.no_loop else ["grouped_mm", "loop"]
    with torch.device(device):  # initialise on the device: the OLMoE-sized model is slow to init on CPU
        for backend in backends:
            model = Transformer(cfg.model_copy(update={"moe": cfg.moe.model_copy(update={"backend": backend})}))
            contenders[f"atom ({backend})"] = step_fn(model.to(dtype=dtype), tokens, hf=False)
        if args.fp8:
            model = convert_to_fp8(Transformer(cfg).to(dtype=dtype), args.fp8)
            contenders[f"atom (grouped_mm, fp8 {args.fp8})"] = step_fn(model, tokens, hf=False)
        if not args.no_hf:
            contenders[HF_NAME] = step_fn(olmoe_like(cfg, dtype, device), tokens, hf=True)

    for step in contenders.values():  # warm-up: allocator, kernels, optimizer state
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, step in contenders.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    return times


def report(shape: str, overrides: list[str], cfg: MoEModelConfig, times: dict[str, list[float]], peak: float,
           args: argparse.Namespace) -> None:
    tokens_per_step = args.batch * args.seq
    flops_per_token = cfg.flops_per_token(args.seq)
    hf_tps = tokens_per_step / statistics.median(times[HF_NAME]) if HF_NAME in times else None
    print(f"\nshape {shape}: {args.config} + {' '.join(overrides)}")
    print(f"params total={cfg.num_params() / 1e6:.1f}M active={cfg.num_params(active=True) / 1e6:.1f}M, "
          f"{flops_per_token / 1e6:.1f} MFLOP/token")
    print(f"{'model':40s} {'step ms':>9s} {'tokens/s':>10s} {'vs HF':>7s} {'GFLOP/s':>9s} {'of peak':>8s}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        tps = tokens_per_step / seconds
        ratio = f"{tps / hf_tps:.2f}x" if hf_tps else "-"
        achieved = tps * flops_per_token
        print(f"{name:40s} {seconds * 1e3:9.1f} {tps:10.0f} {ratio:>7s} {achieved / 1e9:9.1f} {achieved / peak:8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/model/tiny_moe.yaml"))
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    parser.add_argument("--set", action="append", default=None, help="config overrides (replace --shape)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--fp8", choices=["tensorwise", "rowwise"], help="also time our model with FP8 linears")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-expert loop backend")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers (e.g. a model too big for two copies)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.set is not None:
        shapes = {"custom": args.set}
    else:
        shapes = SHAPES if args.shape == "both" else {args.shape: SHAPES[args.shape]}
    peak = matmul_peak(device, dtype)
    print(f"device={device} dtype={args.dtype} batch={args.batch}x{args.seq} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}; torch.mm peak {peak / 1e9:.1f} GFLOP/s")
    for shape, overrides in shapes.items():
        cfg = load_config(MoEModelConfig, args.config, [*overrides, f"max_seq_len={args.seq}"])
        report(shape, overrides, cfg, measure(cfg, args), peak, args)


if __name__ == "__main__":
    main()
