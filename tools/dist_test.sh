#!/usr/bin/env bash
# bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS, e.g. --eval bbox segm | mIoU | accuracy ece]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT. Without CUDA, GPUS CPU
# processes with the gloo backend.
set -e
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3 || { echo "usage: $0 CONFIG CHECKPOINT GPUS [ARGS]" >&2; exit 2; }
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
TOOLS="$(cd "$(dirname "$0")" && pwd)"

PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$TOOLS/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
