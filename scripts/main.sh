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
# one thread per process (what torchrun sets anyway, without its banner)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
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
# ITERS also moves the end of the learning-rate schedule (the second
# scheduler of both toy configs ends at max_iters)
if [ -n "${ITERS:-}" ]; then EXTRA=(--cfg-options "train_cfg.max_iters=$ITERS" "train_cfg.val_interval=$ITERS" "param_scheduler.1.end=$ITERS"); fi

start=$(date +%s)
echo "[main] training $CONFIG on $GPUS processes -> $WORK_DIR (full log: $WORK_DIR/<timestamp>/<timestamp>.log)"
bash tools/dist_train.sh "$CONFIG" "$GPUS" --work-dir "$WORK_DIR" --no-validate \
    --console brief "${EXTRA[@]}"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
trained=$(( $(date +%s) - start ))
echo "[main] trained in $trained s; evaluating $CKPT"
bash tools/dist_test.sh "$CONFIG" "$CKPT" "$GPUS" "${EVAL[@]}" \
    --work-dir "$WORK_DIR/test" --console brief "${EXTRA[@]}"
echo "[main] drawing every validation image (ground truth | prediction)"
mkdir -p outputs
rm -rf "$WORK_DIR/vis"
python tools/analysis/draw_predictions.py "$CONFIG" "$CKPT" \
    --out-dir "$WORK_DIR/vis" --typical "outputs/toy_${TASK}_prediction.png" \
    "${EXTRA[@]}"
python tools/misc/summarize_run.py --task "$TASK" --work-dir "$WORK_DIR" \
    --checkpoint "$CKPT" --picture "outputs/toy_${TASK}_prediction.png" \
    --train-seconds "$trained" --total-seconds "$(( $(date +%s) - start ))"
