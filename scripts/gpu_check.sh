#!/usr/bin/env bash
# GPU check, offline, in under 10 minutes on one GPU: a tiny model in bfloat16 on CUDA
# (parallelize=True where more than one GPU is visible) through `lm_eval --optimize greater`,
# `--optimize gpo` with optimizer_model=self, and `--optimize candidates`; then one GReaTer step
# on a random Llama-3-8B-shaped bfloat16 model at the paper's sizes, its generation timed with the
# greedy decoder, with `generate` and with compiled decode steps (scripts/greater_step_check.py). Prints peak GPU memory,
# seconds per GReaTer step and the counters; exits non-zero on any failure.
#
#   bash scripts/gpu_check.sh                 # on the GPU(s)
#   bash scripts/gpu_check.sh --device cpu    # the same runs on CPU (dry mode, no GPU needed)
#   bash scripts/gpu_check.sh --steps 5 --only greater
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c 'import lm_eval, torch, lm_eval_promptopt' || { echo "gpu_check: install first: pip install -e ." >&2; exit 2; }
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader || true
fi
# 10 minutes on a GPU; the CPU dry mode gets 30 (GPU_CHECK_TIMEOUT=seconds overrides both)
limit=600
for arg in "$@"; do [[ "$arg" == cpu ]] && limit=1800; done
timeout "${GPU_CHECK_TIMEOUT:-$limit}" python scripts/gpu_check.py "$@"
