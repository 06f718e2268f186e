#!/usr/bin/env bash
# lphi-bench on this CPU at Phi-2 width, decode-focused (issue #6's "int4 within 1.5x of its bandwidth floor"):
# the int8 / int4 exports with the KV cache copied whole every token (Concat, the default) and written in
# place (lphi-export --kv-cache shared: onnxruntime GroupQueryAttention over one buffer per layer), int4 in
# blocks of 128 and 256, next to the torch backend (fp32) and transformers' eager generate() as the
# baseline, all in one process, interleaved; the memory rates re-measured before every round.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
.venv/bin/lphi-bench --synthetic-config phi2-2l \
    --synthetic-exports int8,int8-shared,int4-b128,int4-b128-shared,int4-b256,int4-b256-shared \
    --torch-dtypes fp32 --baseline hf --work .cache/bench --threads "$(nproc)" \
    --runs 10 --warmup 1 --new-tokens 32 \
    --json "$OUT/bench_cpu_phi2-2l_decode.json" --markdown "$OUT/bench_cpu_phi2-2l_decode.md" \
    --plot "$OUT/bench_cpu_phi2-2l_decode.png"
