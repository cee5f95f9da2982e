#!/usr/bin/env bash
# GPU check for the MoE model, for a lent NVIDIA machine (no network needed). Run from the repo root:
#   bash bench/gpu_check.sh            # results under ${OUT:-/tmp/gpu_out}
# 1. the GPU-only tests (CUDA grouped_mm vs loop in bf16, FP8 on CUDA, megablocks if it imports, the expert-
#    parallel dispatch path over NCCL on one or two GPUs: all_to_all_single with uneven splits);
# 2. the issue's small shape on GPU: ours vs transformers' OLMoE, bf16;
# 3. OLMoE-1B-7B-like scaled to one GPU (8 of 16 layers): bf16 vs FP8 (tensorwise, rowwise) step time and MFU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PYTHONPATH=${PYTHONPATH:-}:$(pwd)
export HF_HUB_OFFLINE=1 PYTHONPATH

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, transformers, torchao; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'torchao', torchao.__version__)"
} > "$OUT/env.txt" 2>&1

timeout 300 "$PY" -m pytest -q -m gpu tests/pretrain -p no:cacheprovider > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest -m gpu exit $?" >> "$OUT/pytest_gpu.txt"

timeout 300 "$PY" -m bench.moe_step --device cuda --dtype bf16 --batch 8 --seq 1024 --rounds 5 --steps 10 \
  --fp8 rowwise > "$OUT/bench_small.txt" 2>&1
echo "exit $?" >> "$OUT/bench_small.txt"

OLMOE=(--config configs/model/olmoe_1b_7b.yaml --set n_layers=8 --device cuda --dtype bf16 --batch 4 --seq 4096
       --rounds 3 --steps 5 --no-loop --no-hf)
for recipe in tensorwise rowwise; do
  timeout 420 "$PY" -m bench.moe_step "${OLMOE[@]}" --fp8 "$recipe" > "$OUT/bench_olmoe_fp8_$recipe.txt" 2>&1
  echo "exit $?" >> "$OUT/bench_olmoe_fp8_$recipe.txt"
done
tail -n 4 "$OUT"/*.txt
