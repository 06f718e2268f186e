#!/usr/bin/env bash
# lphi-bench on a lent CUDA GPU (issue #6): full-size LLaVA-Phi (random weights, CLIP ViT-L/14-336 + projector +
# Phi-2 with all 32 decoder layers — nothing extrapolated), the torch backend in fp32 / fp16 / bf16 — each with
# decode replayed from a captured CUDA graph and eagerly (GRAPHS=both; on / off for one) — and
# transformers' eager generate() fp32 as the baseline, in one process, interleaved; floors measured on the GPU.
# Runs where the repository is not pip-installed (the lent machine's own torch): PYTHONPATH=. python3 -m ...
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-cuda}
PY=${PY:-python3}
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} $PY -m lphi_edge.cli.bench --synthetic-config phi2-32l --device cuda \
    --torch-dtypes fp32,fp16,bf16 --cuda-graphs "${GRAPHS:-both}" --baseline hf --work "${WORK:-/tmp/lphi-bench}" \
    --runs 10 --warmup 2 --new-tokens 32 \
    --json "$OUT/bench_${TAG}_phi2-32l.json" --markdown "$OUT/bench_${TAG}_phi2-32l.md" --plot "$OUT/bench_${TAG}_phi2-32l.png"
