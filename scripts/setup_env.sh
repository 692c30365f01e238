#!/usr/bin/env bash
# Turn a fresh machine with Python 3.11 into a working .venv in the repository root.
#
#   bash scripts/setup_env.sh          # idempotent: a second run only checks and takes seconds
#
# Environment knobs:
#   PYTHON=python3.11     interpreter used to create .venv (default: python3.11, else python3)
#   VENV=.venv            where the environment lives
#   PIP_FIND_LINKS=DIR    extra wheel folder (CI points it at a cached mmcv wheel)
#   OVERLOCK_TORCH="torch==2.12.1 torchvision==0.27.1"   what to install when no compatible torch exists
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${OVERLOCK_TORCH:-torch==2.12.1 torchvision==0.27.1}"
MMCV_VERSION=2.1.0
STAMP="$VENV/.overlock-setup-stamp"

say()  { printf '[setup] %s\n' "$*" >&2; }
fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- interpreter
if [ -z "${PYTHON:-}" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || fail "no Python interpreter '$PYTHON' found; install Python 3.11 or set PYTHON=/path/to/python3.11"

if [ ! -x "$VENV/bin/python" ]; then
    pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$pyver" = "3.11" ] || say "warning: $PYTHON is Python $pyver; this project is tested on 3.11"
    say "creating virtual environment $VENV with $PYTHON ($pyver)"
    "$PYTHON" -m venv "$VENV" || fail "could not create $VENV (is the venv module installed? Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# ---------------------------------------------------------------- fast path
want_stamp=$(cat setup.py scripts/setup_env.sh requirements/*.txt 2>/dev/null | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && \
   "$PY" -c 'import torch, torchvision, mmcv.ops, mmengine, mmdet, mmseg, mmpretrain, timm, overlock' >/dev/null 2>&1; then
    say "environment $VENV is up to date"
    exit 0
fi

# ---------------------------------------------------------------- build tools
say "installing build tools (setuptools<82 for pkg_resources, wheel, ninja)"
"${PIP[@]}" install -q 'setuptools<82' wheel ninja || fail "pip could not install setuptools/wheel/ninja (network or index problem?)"

# ---------------------------------------------------------------- torch
if "$PY" - <<'PYEOF' >/dev/null 2>&1
import torch, torchvision
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
# mmcv 2.1.0 compiles with C++17: torch >= 2.14 needs C++20.
assert (2, 1) <= (major, minor) < (2, 14)
PYEOF
then
    say "torch already importable: $("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')"
else
    say "installing $TORCH_SPEC (about 1 minute, ~5 GB)"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_SPEC || fail "could not install $TORCH_SPEC; install a torch in [2.1, 2.14) with a matching torchvision into $VENV and re-run"
    "$PY" -c 'import torch, torchvision' || fail "torch/torchvision installed but do not import together; see the error above"
fi

# ---------------------------------------------------------------- mmcv with C++ ops
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'; from mmcv.ops import roi_align, nms" >/dev/null 2>&1; then
    say "mmcv $MMCV_VERSION with compiled ops already installed"
else
    export MMCV_WITH_OPS=1
    if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        export FORCE_CUDA=1
        # only the local GPU's architecture (7 min on 16 cores for sm_90
        # instead of every architecture torch supports), all cores
        if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
            TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || true)
            [ -n "$TORCH_CUDA_ARCH_LIST" ] && export TORCH_CUDA_ARCH_LIST
        fi
        export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
        say "GPU and nvcc found: building mmcv with CUDA ops (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-all}, MAX_JOBS=$MAX_JOBS)"
    fi
    if [ -n "${PIP_FIND_LINKS:-}" ]; then say "PIP_FIND_LINKS=$PIP_FIND_LINKS (a cached mmcv wheel there is used if it fits)"; fi
    say "installing mmcv $MMCV_VERSION with its C++ ops; without a cached wheel this compiles from source (12-16 min on 2 cores)"
    "${PIP[@]}" install --no-build-isolation "mmcv==$MMCV_VERSION" \
        || fail "building mmcv $MMCV_VERSION failed (see the compiler output above); it needs gcc/g++, the Python headers and a torch < 2.14"
    "$PY" -c 'from mmcv.ops import roi_align, nms' || fail "mmcv installed but its C++ ops do not load; remove it ('$PY -m pip uninstall mmcv') and re-run"
fi

# ---------------------------------------------------------------- OpenMMLab, timm, tests, this package
say "installing mmengine, mmdet, mmsegmentation, mmpretrain, timm, test tools and this package (editable)"
"${PIP[@]}" install -q -r requirements/runtime.txt -r requirements/tests.txt \
    || fail "pip could not install the requirements in requirements/; see the error above"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e . || fail "pip install -e . failed; see the error above"

"$PY" -c 'import torch, mmcv.ops, mmengine, mmdet, mmseg, mmpretrain, timm, overlock, mmdet_overlock, mmseg_overlock, mmpretrain_overlock' \
    || fail "the environment was installed but an import fails; see the traceback above"
echo "$want_stamp" > "$STAMP"
say "done: $("$PY" -c 'import torch, mmcv, mmdet, mmseg, mmpretrain, mmengine, timm; print("torch", torch.__version__, "| mmcv", mmcv.__version__, "| mmengine", mmengine.__version__, "| mmdet", mmdet.__version__, "| mmseg", mmseg.__version__, "| mmpretrain", mmpretrain.__version__, "| timm", timm.__version__)')"
