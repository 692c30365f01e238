#!/usr/bin/env bash
# The main job on the embedded default: set up (idempotent), generate the toy
# datasets, train OverLoCK Mask R-CNN with tools/dist_train.sh (2 processes:
# GPUs where CUDA is present, CPU processes with gloo otherwise), evaluate
# with tools/dist_test.sh --eval bbox segm (COCO AP table), and save a drawing
# of the predictions.
#
#   bash scripts/main.sh          # detection + instance segmentation
#   bash scripts/main.sh --seg    # UperNet semantic segmentation (mIoU)
#
# Knobs: GPUS (2), ITERS (config default), WORK_DIR, PORT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TASK=det
if [ "${1:-}" = "--seg" ]; then TASK=seg; shift; fi

bash scripts/setup_env.sh
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
GPUS=${GPUS:-2}
export PORT=${PORT:-29517}

echo "[main] generating the toy datasets in data/toy"
python tools/misc/make_toy_data.py --out data/toy

if [ "$TASK" = det ]; then
    CONFIG=configs/_toy/mask_rcnn_overlock_toy_coco.py
    WORK_DIR=${WORK_DIR:-work_dirs/toy_mask_rcnn}
    EVAL=(--eval bbox segm)
else
    CONFIG=configs/_toy/upernet_overlock_toy_ade.py
    WORK_DIR=${WORK_DIR:-work_dirs/toy_upernet}
    EVAL=(--eval mIoU)
fi
EXTRA=()
if [ -n "${ITERS:-}" ]; then EXTRA=(--cfg-options "train_cfg.max_iters=$ITERS" "train_cfg.val_interval=$ITERS"); fi

start=$(date +%s)
echo "[main] training $CONFIG on $GPUS processes -> $WORK_DIR"
bash tools/dist_train.sh "$CONFIG" "$GPUS" --work-dir "$WORK_DIR" --no-validate "${EXTRA[@]}"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
echo "[main] trained in $(( $(date +%s) - start )) s; evaluating $CKPT"
rm -rf "$WORK_DIR/vis"
bash tools/dist_test.sh "$CONFIG" "$CKPT" "$GPUS" "${EVAL[@]}" \
    --work-dir "$WORK_DIR/test" --show-dir "$WORK_DIR/vis" "${EXTRA[@]}"
mkdir -p outputs
VIS=$(find "$WORK_DIR" -path '*vis*' -name '*.png' | sort | head -n 1)
if [ -n "$VIS" ]; then
    cp "$VIS" "outputs/toy_${TASK}_prediction.png"
    echo "[main] predictions drawn in outputs/toy_${TASK}_prediction.png (all: $WORK_DIR/vis)"
fi
echo "[main] done in $(( $(date +%s) - start )) s"
