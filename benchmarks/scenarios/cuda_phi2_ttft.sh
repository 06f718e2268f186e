#!/usr/bin/env bash
# Issue #18 on a lent CUDA GPU, full size (random weights, CLIP ViT-L/14-336 + projector + Phi-2 with all 32 decoder
# layers — nothing extrapolated): the torch backend in fp16 with decode replayed from a CUDA graph, eager, and with
# its vision encoder and prefill compiled (inductor; decode eager: graphs and the compiled prefill use different KV
# caches, so one engine cannot have both) — and the pair that can: the compiled engine for the frame and prompt
# handing the cache to the CUDA-graph engine for the tokens (--phased) — beside transformers' generate() in fp16, in
# one process, interleaved; floors measured on the GPU. INT4=1 adds the int4 export on onnxruntime's CUDA
# provider (needs onnxruntime-gpu) and the compiled → int4 pair. Runs where the repository is not pip-installed
# (the lent machine's own torch): PYTHONPATH=. python3 -m ...
#   OUT=$OUT TAG=h200 bash benchmarks/scenarios/cuda_phi2_ttft.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-cuda}
PY=${PY:-python3}
COMPILED="torch/fp16 (eager decode) (compiled)"
EXTRA=(--phased "$COMPILED+torch/fp16 (CUDA graphs)")
if [ "${INT4:-0}" = 1 ]; then
    EXTRA+=(--synthetic-exports int4-b256-shared --phased "$COMPILED+onnxruntime/int4")
fi
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} $PY -m lphi_edge.cli.bench --synthetic-config phi2-32l --device cuda \
    --torch-dtypes fp16 --cuda-graphs both --torch-compile both --baseline hf --work "${WORK:-/tmp/lphi-bench}" \
    "${EXTRA[@]}" --runs 10 --warmup 2 --new-tokens 32 \
    --json "$OUT/bench_${TAG}_phi2-32l_ttft.json" --markdown "$OUT/bench_${TAG}_phi2-32l_ttft.md" \
    --plot "$OUT/bench_${TAG}_phi2-32l_ttft.png"
