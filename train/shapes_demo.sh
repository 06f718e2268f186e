#!/usr/bin/env bash
# Reproduces lphi_edge/assets/shapes_demo/ on a CPU (2 threads, ≈ 70 min): data, init (vision tower pretrained),
# stage 1, stage 2, stage 3 (colour curriculum). Then: python -m lphi_edge.eval.shapes (see train/README.md).
# Rerunning resumes an interrupted stage from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-.cache/shapes-demo}
BIN=.venv/bin
mkdir -p "$W"
# half of the frames as a robot camera delivers them (resized through 720p, JPEG, noise, brightness)
[ -f "$W/data/finetune_colour.json" ] || $BIN/lphi-make-shapes --out "$W/data" --n 30000 --seed 1 --multi-turn 0.6 \
    --binding --camera-effects 0.5 --colour-drill
# the tiny vision tower is pretrained on the frames first (as LLaVA starts from a pretrained CLIP), every patch
# feature taught the (colour, shape) it shows; the language model is Phi 192 × 3 layers, 6 heads
[ -f "$W/init/config.json" ] || $BIN/python -m lphi_edge.train.demo "$W/init" --seed 0 \
    --vision-data "$W/data" --vision-steps 4000 --vision-per-patch
[ -f "$W/stage1/model/config.json" ] || $BIN/lphi-train pretrain --config train/configs/shapes_pretrain.yaml \
    --model "$W/init" --data "$W/data/pretrain.json" --out "$W/stage1"
[ -f "$W/stage2/model/config.json" ] || $BIN/lphi-train finetune --config train/configs/shapes_finetune.yaml \
    --model "$W/stage1/model" --data "$W/data/finetune_binding.json" --out "$W/stage2"
[ -f "$W/stage3/model/config.json" ] || $BIN/lphi-train finetune --config train/configs/shapes_colour.yaml \
    --model "$W/stage2/model" --data "$W/data/finetune_colour.json" --out "$W/stage3"
