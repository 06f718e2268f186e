#!/usr/bin/env bash
# Issue #17 on this CPU at Phi-2 width: cold TTFT, TTFT at K = 144 visual tokens (VisionZip-style reduction) and
# the reused-frame TTFT (a new noisy JPEG capture of the frame just asked about; features and image positions
# from the caches), as separate rows of the same engines in one run, interleaved, beside transformers' fp32
# generate(). Engines: the torch backend in fp32 and bf16 (bf16: the fastest vision encoder and prefill here,
# bench_cpu_phi2-2l_ttft.json) and the onnxruntime int8 export with the vision encoder in int8 too. Exports are built once under .cache/bench17
# (exports made before issue #17 lack the vision encoder's image_attention output that K needs).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
.venv/bin/lphi-bench --synthetic-config phi2-2l --synthetic-exports int8-vision \
    --torch-dtypes fp32,bf16 --baseline hf --work .cache/bench17 --threads "$(nproc)" \
    --visual-tokens 576,144 --reused-frame \
    --runs 5 --warmup 1 --new-tokens 8 \
    --json "$OUT/bench_cpu_phi2-2l_tokens.json" --markdown "$OUT/bench_cpu_phi2-2l_tokens.md" \
    --plot "$OUT/bench_cpu_phi2-2l_tokens.png"
