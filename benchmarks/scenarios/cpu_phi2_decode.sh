#!/usr/bin/env bash
# lphi-bench on this CPU at Phi-2 width, decode-focused (issue #6's "int4 within 1.5x of its bandwidth floor"):
# int4 (blocks of 256) with the KV cache copied whole every token (Concat, the default), written in place
# (lphi-export --kv-cache shared: onnxruntime GroupQueryAttention over one buffer per layer) and written in
# place as int8 (--kv-quant int8: per-channel scales calibrated on the PyTorch model); int8 and int4 blocks
# of 128 with the cache in place; next to the torch backend (fp32) and transformers' eager generate() as
# the baseline, all in one process, interleaved; the copy rate re-measured before and after every
# engine's run (the rate after a run is the one beside its decode).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
.venv/bin/lphi-bench --synthetic-config phi2-2l \
    --synthetic-exports int8-shared,int4-b128-shared,int4-b256,int4-b256-shared,int4-b256-shared-kv8 \
    --torch-dtypes fp32 --baseline hf --work .cache/bench --threads "$(nproc)" \
    --runs 15 --warmup 1 --new-tokens 32 \
    --json "$OUT/bench_cpu_phi2-2l_decode.json" --markdown "$OUT/bench_cpu_phi2-2l_decode.md" \
    --plot "$OUT/bench_cpu_phi2-2l_decode.png"
