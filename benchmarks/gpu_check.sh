#!/usr/bin/env bash
# The GPU check: cuda tests, training speed (bf16, fp32) against the plain-PyTorch
# limit with compute efficiency, a 3-minute Multi30k training with test BLEU, and beam-1/5
# translation speed, as ONE JSON object on stdout (progress on stderr). Under 8 minutes on one
# H100/H200; installs nothing: it runs this checkout with PYTHONPATH. Without a CUDA device it
# prints {"status": "no CUDA device", ...} and exits 0. See benchmarks/README.md.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR] > gpu_check.json
#
# DATA_DIR holds Multi30k {train,val,test_2016_flickr}.{en,de}[.gz]; default $DATA_DIR, else
# recipes/multi30k/corpus (`make -C recipes/multi30k corpus` downloads it there). PYTHON picks the interpreter (python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:-${DATA_DIR:-$repo/recipes/multi30k/corpus}}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$repo/benchmarks/gpu_check.py" --data-dir "$data" "${@:2}"
