#!/usr/bin/env bash
# Issue 9's GPU measurements in stages, each within one 10-minute call of a
# GPU machine, results written to RESULTS (logs, --json files, and
# summary.md: every target with the ratio it reached, tools/analysis/targets.py).
#
#   bash scripts/gpu_measure.sh RESULTS STAGE [STAGE ...]
#
# Stages (estimated H100 minutes in brackets, not yet measured: the script
# has not run on a GPU; each step has its own time
# limit, so that a hanging step costs its limit, not the call):
#   env       the GPU, versions, Triton kernel variants compiled for it,
#             tools/misc/collect_env.py --check on it (2)
#   tests     the GPU-relevant tests on the real compiler (3-5; the toy
#             detector in bf16 on CUDA too when mmcv is built)
#   eager     backbone vs ConvNeXt-T / ResNet-50 / Swin-T, train AMP fp16 +
#             fp32 at 2x800x1216 with a profile, eval fp32 / fp16 / bf16 (3)
#   compile   the same with torch.compile (reduce-overhead: CUDA graphs),
#             train fp16 and eval fp32 / fp16; ours and ConvNeXt-T (6-9)
#   detector  Mask R-CNN + OverLoCK-T vs mmdet's Swin-T, fp32 and AMP fp16,
#             eager (needs mmcv's CUDA ops: source .gpu/on_device.sh
#             without SKIP_MMCV) (4)
#   detector-compile  the same with the backbones compiled (6-9)
#   summary   summary.md from the --json files so far (seconds)
# A stage's results stay in RESULTS; re-running a stage overwrites its own.
# With the device tool: carry .gpu, and e.g.
#   source .gpu/on_device.sh; bash scripts/gpu_measure.sh /tmp/m env tests eager summary; \
#     tar czf $OUT/m.tgz -C /tmp m; cp /tmp/m/summary.md /tmp/m/steps.log $OUT/
# (SKIP_MMCV=1 before `source` when no detector stage runs.)
set -u
RESULTS=${1:?usage: bash scripts/gpu_measure.sh RESULTS STAGE [STAGE ...]}
shift
[ $# -gt 0 ] || { echo "name at least one stage: env tests eager compile detector detector-compile summary" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
# one compiler cache for every step of a machine: the eval graphs reuse
# what the train ones compiled
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/overlock_inductor_cache}
# the targets' settings; the variables exist so that the tests can run the
# same stages on CPU at tiny sizes (tests/test_benchmarks.py)
ARCH=${ARCH:-t}
TRAIN_SIZE=${TRAIN_SIZE:-800 1216}
TRAIN_BATCH=${TRAIN_BATCH:-2}
EVAL_SIZE=${EVAL_SIZE:-800 1216}
HALF=${HALF:-fp16 bf16}            # autocast dtypes; the first is AMP's
TRAIN_DTYPES=${TRAIN_DTYPES:-fp16 fp32}
COMPILE_MODE=${COMPILE_MODE:-reduce-overhead}
DET_AMPS=${DET_AMPS:-fp32 fp16}    # detector-compile takes the last
COMMON=(--device "$DEVICE" --arch "$ARCH" --warmup "${WARMUP:-3}" --repeats "${REPEATS:-10}")
DET_COMMON=(--device "$DEVICE" --iters "${REPEATS:-10}" --warmup "${WARMUP:-3}"
            --size ${DET_SIZE:-1333 800} --batch "${DET_BATCH:-2}")
[ -z "${DET_CONFIGS:-}" ] || DET_COMMON+=(--configs $DET_CONFIGS)
BENCH=tools/analysis/benchmark.py
DET=tools/analysis/benchmark_detector.py
FAILED=0

# step NAME LIMIT_S CMD...: CMD's output in RESULTS/NAME.log, its status
# and time in RESULTS/steps.log; a failing step does not stop the stage
step() {
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $(date -u +%H:%M:%S) $name (limit ${limit} s): $*" | tee -a "$RESULTS/steps.log"
  start=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || FAILED=1
  echo "   rc $rc$([ $rc -eq 124 ] && echo ' (time limit)'), $(( $(date +%s) - start )) s" | tee -a "$RESULTS/steps.log"
  tail -n 15 "$RESULTS/$name.log"
}

for stage in "$@"; do
  case $stage in
    env)
      step env 120 bash -c "nvidia-smi; $PY -c 'import torch, triton, timm; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), triton.__version__, timm.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())'; git log -1 --oneline 2>/dev/null || true"
      cc=$($PY -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 90)
      step triton_compile 300 $PY tools/analysis/triton_compile.py --cc "$cc"
      # every kernel and an XT backbone step on the GPU against float64
      step collect_env 240 $PY tools/misc/collect_env.py --check --device "$DEVICE"
      ;;
    tests)
      step tests 540 $PY -m pytest -q -x -p no:cacheprovider \
        tests/test_triton_contmix.py tests/test_triton_dwconv.py \
        tests/test_cuda_dispatch.py tests/test_dispatch.py \
        tests/test_dwconv_tuning.py tests/test_recompute.py tests/test_amp.py \
        tests/test_mm_amp.py
      ;;
    eager)
      step eager_train 300 $PY $BENCH "${COMMON[@]}" --size $TRAIN_SIZE --batch $TRAIN_BATCH \
        --mode train --peers --dtype $TRAIN_DTYPES --profile 25 --json "$RESULTS/eager_train.json"
      step eager_eval 200 $PY $BENCH "${COMMON[@]}" --size $EVAL_SIZE --batch 1 \
        --mode eval --peers --dtype fp32 $HALF --json "$RESULTS/eager_eval.json"
      ;;
    compile)
      step compile_train 330 $PY $BENCH "${COMMON[@]}" --size $TRAIN_SIZE --batch $TRAIN_BATCH \
        --mode train --compare ours convnext_t --dtype ${HALF%% *} --compile $COMPILE_MODE \
        --json "$RESULTS/compile_train.json"
      step compile_eval 240 $PY $BENCH "${COMMON[@]}" --size $EVAL_SIZE --batch 1 \
        --mode eval --compare ours convnext_t --dtype fp32 ${HALF%% *} --compile $COMPILE_MODE \
        --json "$RESULTS/compile_eval.json"
      ;;
    detector)
      for amp in $DET_AMPS; do
        step detector_$amp 270 $PY $DET "${DET_COMMON[@]}" --amp $amp \
          --json "$RESULTS/detector_$amp.json"
      done
      ;;
    detector-compile)
      step detector_compile_${DET_AMPS##* } 540 $PY $DET "${DET_COMMON[@]}" --amp ${DET_AMPS##* } \
        --compile-backbone --json "$RESULTS/detector_compile_${DET_AMPS##* }.json"
      ;;
    summary)
      jsons=("$RESULTS"/*.json)
      if [ -e "${jsons[0]}" ]; then
        echo "== $(date -u +%H:%M:%S) summary" >> "$RESULTS/steps.log"
        $PY tools/analysis/targets.py "${jsons[@]}" --markdown "$RESULTS/summary.md" || FAILED=1
      else
        echo "no --json results in $RESULTS yet" | tee "$RESULTS/summary.md"
      fi
      ;;
    *)
      echo "unknown stage '$stage': choose from env tests eager compile detector detector-compile summary" >&2
      exit 2
      ;;
  esac
done
exit $FAILED
