#!/usr/bin/env bash
# The prepared GPU measurement (prs_jax/tools/gpu_bench.py): ConViT-Ti at 32 px and ConViT-S at
# 224 px in bfloat16, each at the largest per-device batch that fits, images/s in both PRS
# phases, MFU against the datasheet peak, and timm's PyTorch model on the same GPU. About 8
# minutes on one GPU; prints one table and writes it as JSON.
#
#   scripts/gpu_bench.sh --peak_tflops 989 --vs-timm                 # one H100 SXM
#   scripts/gpu_bench.sh --peak_tflops 312 --vs-timm --output a100.json   # one A100
#   scripts/gpu_bench.sh --dry_run --vs-timm                         # the whole path on a CPU
#
# One GPU: the first one unless CUDA_VISIBLE_DEVICES says otherwise. Needs JAX with CUDA, flax,
# optax, orbax and the project's small dependencies (no TensorFlow); torch and timm for --vs-timm.
set -euo pipefail

cd "$(dirname "$0")/.."
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && "${PYTHON}" == python ]]; then
  PYTHON=.venv/bin/python
fi
if [[ " $* " != *" --dry_run "* ]] && ! command -v nvidia-smi > /dev/null; then
  echo "gpu_bench.sh: no nvidia-smi here; on a CPU, --dry_run checks the path" >&2
  exit 2
fi
exec "${PYTHON}" -m prs_jax.tools.gpu_bench "$@"
