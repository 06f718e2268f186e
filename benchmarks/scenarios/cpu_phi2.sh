#!/usr/bin/env bash
# lphi-bench on this CPU at Phi-2 width (issue #6): a random-weight phi2-2l model (full CLIP ViT-L/14-336
# + projector + Phi-2 widths, 2 decoder layers; 32-layer figures extrapolated and labelled), the torch
# backend in fp32 and bf16, its onnxruntime exports, and transformers' eager generate() as the baseline,
# all in one process, interleaved. Exports are built once under .cache/bench and reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
.venv/bin/lphi-bench --synthetic-config phi2-2l --synthetic-exports fp32,fp16,int8,int4,int4-b128,int8-vision \
    --torch-dtypes fp32,bf16 --baseline hf --work .cache/bench --threads "$(nproc)" \
    --runs 5 --warmup 1 --new-tokens 32 \
    --json "$OUT/bench_cpu_phi2-2l.json" --markdown "$OUT/bench_cpu_phi2-2l.md" --plot "$OUT/bench_cpu_phi2-2l.png"
