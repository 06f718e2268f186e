#!/usr/bin/env bash
# Issue #18 on this CPU at Phi-2 width: a frame → answer with the right engine for each phase. A random-weight
# phi2-2l model (full CLIP ViT-L/14-336 + projector + Phi-2 widths, 2 decoder layers; 32-layer figures
# extrapolated and labelled): the torch backend in bf16 and in int8 (int8 matmuls on the CPU's VNNI / AMX units,
# bf16 elsewhere), each eager and with its vision encoder and prefill compiled (--torch-compile both: inductor,
# freezing); the int4 export with the KV cache written in place (the fastest decode); and compiled torch for the
# frame and prompt handing the cache to int4 for the tokens (--phased, one Assistant, the cache handed over once
# per answer) — beside transformers' generate() in fp32 and bf16, in one process, interleaved. Floors (matmul
# rates in fp32, bf16 and int8, memory copy/read rates) measured in the same run. Builds what it needs under
# $WORK (default .cache/bench18): from an empty cache, the checkpoint and the export take most of the time.
#   OUT=/tmp/ttft bash benchmarks/scenarios/cpu_phi2_ttft.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-.cache/bench18}
mkdir -p "$OUT"
.venv/bin/lphi-bench --synthetic-config phi2-2l --synthetic-exports int4-b256-shared \
    --torch-dtypes bf16,int8 --torch-compile both --baseline hf --work "$WORK" --threads "$(nproc)" \
    --phased "torch/bf16 (compiled)+onnxruntime/int4" --phased "torch/int8 (compiled)+onnxruntime/int4" \
    --runs 5 --warmup 1 --new-tokens 32 \
    --json "$OUT/bench_cpu_phi2-2l_ttft.json" --markdown "$OUT/bench_cpu_phi2-2l_ttft.md" \
    --plot "$OUT/bench_cpu_phi2-2l_ttft.png"
