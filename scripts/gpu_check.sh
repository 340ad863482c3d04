#!/usr/bin/env bash
# GPU check (issue 10), under 5 minutes on one H100/H200, nothing downloaded:
#   1. the combiner benchmark in bf16 on a randomly initialised ~1B Llama (model=random_1b): step time
#      and peak memory of sum, pcgrad and sago against plain GD, at an activation-dominated and a
#      gradient-dominated shape, and with train.accumulate=4;
#   2. one smoke run of the whole pipeline on the GPU (experiment=smoke);
#   3. with two or more GPUs, the same smoke run under trainer=fsdp across 2 processes (torchrun).
# Usage: bash scripts/gpu_check.sh [OUTDIR]   (PYTHON=... to choose the interpreter)
# A dry run of the same commands on a CPU, at toy size: GPU_CHECK_DEVICE=cpu GPU_CHECK_MODEL=tiny GPU_CHECK_DTYPE=fp32
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check_out}"
mkdir -p "$out"
py="${PYTHON:-python}"
export WANDB_MODE=offline PYTHONUNBUFFERED=1 UNLEARN_CACHE="${UNLEARN_CACHE:-$PWD/$out/cache}"

device="${GPU_CHECK_DEVICE:-cuda}" model="${GPU_CHECK_MODEL:-random_1b}" dtype="${GPU_CHECK_DTYPE:-bf16}"
if [ "$device" = cuda ]; then
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')"
  gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
else
  gpus=0
fi
bench="$py -m unlearn.perf.combiners --models $model --dtype $dtype --device $device --combiners sum pcgrad sago --warmup 2"
echo "== 1. benchmark, one micro-batch"
$bench --shapes 8x512 1x16 --repeats 5 2>&1 | tee "$out/bench.md"
echo "== 1. benchmark, train.accumulate=4"
$bench --shapes 8x512 --accumulate 4 --repeats 3 2>&1 | tee "$out/bench_accumulate4.md"
echo "== 2. smoke run on the GPU"
"$py" -m unlearn experiment=smoke model.device="$device" hydra.run.dir="$out/smoke" 2>&1 | tail -n 30
if [ "$gpus" -ge 2 ]; then
  echo "== 3. smoke run, trainer=fsdp, 2 processes"
  port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  "$py" -m torch.distributed.run --nproc-per-node=2 --master-port="$port" -m unlearn experiment=smoke trainer=fsdp \
    hydra.run.dir="$out/smoke_fsdp" 2>&1 | tail -n 30
else
  echo "== 3. skipped: one GPU (the 2-process FSDP run needs two)"
fi
echo "gpu_check: done; tables in $out/"
