#!/usr/bin/env bash
# The prepared GPU check, for the first session that finds a device lent (issue #25): at most about 8 minutes on
# one H200, writing bench/results/gpu.md (and a copy with the full log under $OUT when the device tool sets it).
#
#   bash bench/gpu_check.sh
#
# 1. Memory and time per step at Qwen2.5-0.5B (student) / Qwen2.5-7B (teacher) shapes, random weights built from
#    configs (the device has no hub), 8 × 512 and 16 × 1024 new tokens, both readings (drafts, audit): each run in
#    its own process under a time limit (bench/gpu_memory.py --check).
# 2. scale/train.py under torchrun on one GPU (nccl for FSDP2's collectives, gloo for the control group), the toy
#    world, two steps for each reading, each step's loss printed.
# What the device lacks (openai, rapidfuzz) is not needed here: φ is lexical and the teacher local.
# Rehearse it on a CPU, scaled down:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_ARGS="--student-layers 1 --teacher-layers 1 --length-divisor 32" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
results=bench/results/gpu.md
log=${OUT:-/tmp}/gpu_check.log
started=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$log"

device=${GPU_CHECK_DEVICE:-cuda}
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of options
timeout 335 python3 bench/gpu_memory.py --check --device "$device" --run-seconds 80 --steps 1 --results "$results" \
  ${GPU_CHECK_ARGS:-} 2>&1 | tee -a "$log"
[ -f "$results" ] || echo "# The GPU check: bench/gpu_memory.py --check wrote nothing (see the log)" > "$results"

{ echo; echo "## scale/train.py, one $device device (torchrun --nproc_per_node=1; nccl on a GPU), the toy world, 2 steps"; echo
  echo "| objective | result | losses | seconds |"; echo "|---|---|---|---|"; } >> "$results"
for objective in drafts audit; do
  out=/tmp/gpu-check-scale-$objective
  rm -rf "$out"
  t0=$(date +%s)
  if timeout 70 python3 -m torch.distributed.run --standalone --nproc_per_node=1 scale/train.py \
       --student toy --teacher toy --data toy --eval-data toy --device "$device" --batch-size 8 --eval-size 16 \
       --steps 2 --similarity lexical --objective "$objective" --out "$out" >> "$log" 2>&1; then
    losses=$(python3 -c "import json,sys; print(', '.join(f\"{json.loads(l)['loss/total']:.4f}\" for l in open(sys.argv[1]) if 'loss/total' in l))" "$out/metrics.jsonl")
    echo "| $objective | ran | $losses | $(( $(date +%s) - t0 )) |" >> "$results"
  else
    echo "| $objective | failed (exit $?; see the log) | | $(( $(date +%s) - t0 )) |" >> "$results"
  fi
done
echo >> "$results"
echo "The whole check took $(( $(date +%s) - started )) s." >> "$results"
cat "$results"
[ -n "${OUT:-}" ] && cp "$results" "$OUT/gpu.md"
exit 0
