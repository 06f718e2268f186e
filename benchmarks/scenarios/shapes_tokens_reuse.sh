#!/usr/bin/env bash
# Issue #17's accuracy side on the shipped shapes-demo model (N = 64 image tokens, 1 272 questions about 400
# new frames, seed 12345): K = 64 / 48 / 32 / 16 visual tokens on the torch backend, K = 16 on its fp32 ONNX
# export too (onnxruntime must select the same tokens: identical answers), and frame reuse on static camera
# streams (400 scenes, each scene's questions asked twice over, each about a new capture with sensor noise
# σ 3 + JPEG 90; then 100 scenes at σ 6 + JPEG 75): answers with reuse against answers recomputed per capture.
# A rerun resumes its answers files; after the model changed they are refused by name: delete them first.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${OUT:-benchmarks/results}
E=".venv/bin/lphi-eval"
for K in 64 48 32 16; do
    $E run --model shapes-demo --benchmark shapes --n 400 --seed 12345 --visual-tokens $K --out $R/shapes_eval_k$K.jsonl
done
$E compare $R/shapes_eval_torch.jsonl $R/shapes_eval_k64.jsonl $R/shapes_eval_k48.jsonl $R/shapes_eval_k32.jsonl \
    $R/shapes_eval_k16.jsonl --json > $R/shapes_visual_tokens.json
# the same K without contextual (merged) tokens: dominant tokens only
.venv/bin/python - "$R/shapes_visual_tokens_dominant_only.json" <<'PY'
import json, sys
from lphi_edge import Assistant
from lphi_edge.eval.shapes import evaluate_shapes
from lphi_edge.runtime.visual_tokens import VisualTokens
out = {}
for k in (48, 32, 16):
    a = Assistant.from_pretrained("shapes-demo", visual_tokens=VisualTokens(k, contextual=0))
    out[f"K={k}, contextual 0"] = evaluate_shapes(a, n=400, seed=12345)
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
$E run --model shapes-demo --backend onnxruntime --benchmark shapes --n 400 --seed 12345 --visual-tokens 16 \
    --out $R/shapes_eval_k16_onnx.jsonl  # the shipped fp32 export of the same weights
$E compare $R/shapes_eval_k16.jsonl $R/shapes_eval_k16_onnx.jsonl --json > $R/shapes_visual_tokens_torch_vs_onnx.json
for REUSE in off on; do
    $E run --model shapes-demo --benchmark shapes-stream --n 400 --frame-reuse $REUSE \
        --out $R/shapes_stream_reuse_$REUSE.jsonl
    $E run --model shapes-demo --benchmark shapes-stream --n 100 --noise 6 --jpeg-quality 75 --frame-reuse $REUSE \
        --out $R/shapes_stream_harsh_reuse_$REUSE.jsonl
done
$E compare $R/shapes_stream_reuse_off.jsonl $R/shapes_stream_reuse_on.jsonl --json > $R/shapes_stream_reuse.json
$E compare $R/shapes_stream_harsh_reuse_off.jsonl $R/shapes_stream_harsh_reuse_on.jsonl --json \
    > $R/shapes_stream_harsh_reuse.json
