#!/usr/bin/env bash
# One prepared GPU check, from the repo root:  bash bench/gpu_check.sh [--dry-run] [gpu_check.py options]
#
# Finds a Python that imports torch (.venv, then python3 / python). Without one it installs
# requirement.txt into a throw-away venv (bounded time); a missing DALI is installed the same way
# (a venv that sees the system packages). Then bench/gpu_check.py runs every section within what is
# left of GPU_CHECK_TOTAL_S (default 470 s, i.e. under 8 minutes) and writes $OUT/gpu_check.md when
# $OUT is set, else bench/RESULTS_gpu.md.
#
# Offline machines (the lent GPU machines reach no index): carry the missing wheels in .whl/ and
# they are installed with --no-index first. Their image has torch, torchvision, numpy, onnx; the
# checks also import easydict and cv2. From the repo root, where pip works (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl easydict opencv-python-headless==5.0.0.93        # ~61 MB, under the 64 MiB carry limit
# then run `bash bench/gpu_check.sh` there with carry [".whl"]. DALI's wheel (~0.5 GB) cannot travel
# that way: without DALI on the machine its section records the import error, and the
# decode section measures GPU JPEG decode with torchvision's nvJPEG instead.
set -u
cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-470}
VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/arcface-gpu-check-venv}
PIP_OPTS=(-q --disable-pip-version-check --retries 1 --timeout 20)

log() { echo "[gpu_check.sh] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }
has() { "$1" -c "import $2" >/dev/null 2>&1; }

find_python() {
    local c
    for c in .venv/bin/python "$VENV/bin/python" python3 python; do
        if command -v "$c" >/dev/null 2>&1 && has "$c" torch; then echo "$c"; return 0; fi
    done
    return 1
}

make_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    local base
    base=$(command -v python3 || command -v python) || return 1
    "$base" -m venv --system-site-packages "$VENV"
}

fail_report() {
    local out=bench/RESULTS_gpu.md
    [ -n "${OUT:-}" ] && out="$OUT/gpu_check.md"
    mkdir -p "$(dirname "$out")"
    printf '# GPU check (bench/gpu_check.sh)\n\n## GPU check: not run\n\n- date: %s\n- %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" >> "$out"
    log "$1 (written to $out)"
}

WHEELS=${GPU_CHECK_WHEELS:-.whl}
OFFLINE=""
PY=$(find_python)
if [ -n "$PY" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE=${TMPDIR:-/tmp}/arcface-gpu-check-site
    log "installing the carried wheels from $WHEELS into $SITE (no index)"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        log "installing the carried wheels failed"
    fi
    OFFLINE=1
fi
if [ -z "$PY" ]; then
    log "no Python with torch: installing requirement.txt into $VENV (at most 300 s)"
    if make_venv; then
        timeout 300 "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" -r requirement.txt || log "pip install failed"
    fi
    PY=$(find_python) || { fail_report "torch is not installed and 'pip install -r requirement.txt' failed"; exit 1; }
fi
if [ -n "$OFFLINE" ] && ! has "$PY" nvidia.dali; then
    log "nvidia.dali missing and no index to install it from: the DALI section will record the import error"
elif ! has "$PY" nvidia.dali; then
    log "nvidia.dali missing for $PY: installing nvidia-dali-cuda120 into $VENV (at most 120 s)"
    if make_venv && timeout 120 "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" nvidia-dali-cuda120 \
            && has "$VENV/bin/python" torch && has "$VENV/bin/python" nvidia.dali; then
        PY="$VENV/bin/python"
    else
        log "DALI unavailable: its section will record the import error"
    fi
fi

LEFT=$(( TOTAL - $(elapsed) ))
BUDGET=$(( LEFT - 15 ))
if [ "$BUDGET" -lt 30 ]; then
    fail_report "setup took $(elapsed) s of the ${TOTAL} s allowed: no time left for the checks"
    exit 1
fi
log "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
log "setup took $(elapsed) s; running bench/gpu_check.py with a budget of ${BUDGET} s"
exec timeout -k 5 "$LEFT" "$PY" bench/gpu_check.py --budget "$BUDGET" "$@"
