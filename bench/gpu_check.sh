#!/usr/bin/env bash
# The GPU check (issue 12): one script, meant to finish within 8 minutes on one H100.
#
#   bench/gpu_check.sh [--reference DIR] [--out DIR]   # on a machine with a CUDA GPU
#   bench/gpu_check.sh --cpu-smoke                     # the same steps, tiny, on the CPU (what CI can run)
#
# 1. runs the CUDA-marked tests (tests/test_cuda.py: SyncBatchNorm + NCCL DDP at one rank under torchrun,
#    bf16 autocast against fp32 over 50 steps, channels_last, torch.compile);
# 2. times the training step (bench/train_step.py) for seed64 and paper128 at batch 64 and 256 in fp32, bf16
#    and bf16 + channels_last, and bf16 + channels_last + torch.compile at batch 256 (compiling costs about a
#    minute per model, so only the throughput figure that matters gets it); with --reference DIR (a checkout of
#    heykeetae/Self-Attention-GAN) also the reference's seed64 step on the same card; paper128 with its FLOPs
#    per step and its model-FLOPs utilisation against the card's dense bf16 peak;
# 3. prints one JSON line per figure on stdout (progress goes to stderr), the last one the elapsed time.
#
# --cpu-smoke runs every step on the CPU with 1-step timings of width-8 models at batch 2 and 4: the CUDA tests
# skip (their reasons are in the JSON line) and compile is left out. PYTHON picks the interpreter;
# PEAK_TFLOPS overrides the peak looked up from the card's name.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
SMOKE=0
REFERENCE=()
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --reference) REFERENCE=(--reference "$2"); shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
started=$(date +%s)
failures=0

progress() { echo "[gpu_check $(($(date +%s) - started))s] $*" >&2; }

# A figure that could not be measured still gets its line, so a reader sees what is missing and why.
run_json() {  # run_json NAME TIMEOUT_S COMMAND...: its stdout JSON lines pass through
    local name=$1 limit=$2 rc
    shift 2
    timeout "$limit" "$@"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        failures=$((failures + 1))
        printf '{"check": "%s", "error": "exit status %s%s"}\n' "$name" "$rc" \
            "$([ "$rc" -eq 124 ] && echo " (timed out after ${limit}s)")"
    fi
}

if [ "$SMOKE" -eq 1 ]; then
    DEVICE=cpu
    TIMING=(--steps 1 --warmup 0 --override g_conv_dim=8 --override d_conv_dim=8)
    BATCHES=2,4
    COMPILE_BATCH=""
    PEAK=${PEAK_TFLOPS:-1}  # a placeholder: the CPU has no meaningful peak here
else
    DEVICE=cuda
    TIMING=(--steps 10 --warmup 3)
    BATCHES=64,256
    COMPILE_BATCH=256
    # Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets; an unknown card reports no MFU.
    PEAK=${PEAK_TFLOPS:-$("$PYTHON" -c '
import torch
name = torch.cuda.get_device_name()
peaks = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1}
print(next((str(v) for k, v in peaks.items() if k in name), ""))')}
fi
PEAK_ARGS=()
[ -n "$PEAK" ] && PEAK_ARGS=(--peak-tflops "$PEAK")

# 1. The CUDA-marked tests, summarised from pytest's JUnit XML (skip reasons included). Without the project's
# addopts: coverage is not wanted here (this step took 5 s instead of 2.3 s on the CPU) and a GPU machine's
# Python may lack pytest-cov, which would make `--cov` an unknown option.
progress "pytest -m cuda"
timeout 300 "$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -ra -p no:cacheprovider -o addopts="" \
    --junitxml="$OUT/cuda-tests.xml" >"$OUT/cuda-tests.log" 2>&1
tests_rc=$?
[ "$tests_rc" -ne 0 ] && failures=$((failures + 1))
"$PYTHON" - "$OUT/cuda-tests.xml" "$tests_rc" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
try:
    cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
except (OSError, ET.ParseError) as error:
    print(json.dumps({"check": "cuda_tests", "error": f"no test report: {error}", "rc": int(sys.argv[2])}))
    sys.exit()
outcome = {}
for case in cases:
    name = f"{case.get('classname')}::{case.get('name')}"
    bad = case.find("failure") if case.find("failure") is not None else case.find("error")
    skipped = case.find("skipped")
    outcome[name] = ("failed: " + (bad.get("message") or "")[:300] if bad is not None
                     else "skipped: " + (skipped.get("message") or "") if skipped is not None else "passed")
counts = {kind: sum(v.startswith(kind) for v in outcome.values()) for kind in ("passed", "failed", "skipped")}
print(json.dumps({"check": "cuda_tests", "rc": int(sys.argv[2]), **counts, "tests": outcome}))
PY

# 2. Training-step timings, one process per preset (and one per compiled model).
for preset in seed64 paper128; do
    extra=()
    [ "$preset" = seed64 ] && extra=("${REFERENCE[@]}")
    [ "$preset" = paper128 ] && extra=(--flops "${PEAK_ARGS[@]}")
    progress "train_step $preset"
    run_json "train_step $preset" 420 "$PYTHON" bench/train_step.py --preset "$preset" --device "$DEVICE" \
        --batch-size "$BATCHES" --variants fp32,bf16,bf16-cl "${TIMING[@]}" "${extra[@]}"
    if [ -n "$COMPILE_BATCH" ]; then
        progress "train_step $preset compiled"
        [ "$preset" = seed64 ] && extra=()
        run_json "train_step $preset bf16-cl-compile" 300 "$PYTHON" bench/train_step.py --preset "$preset" \
            --device "$DEVICE" --batch-size "$COMPILE_BATCH" --variants bf16-cl-compile "${TIMING[@]}" "${extra[@]}"
    else
        printf '{"check": "train_step %s bf16-cl-compile", "skipped": "no compile in --cpu-smoke"}\n' "$preset"
    fi
done

# 3. The end.
printf '{"check": "gpu_check", "seconds": %s, "failures": %s, "smoke": %s, "out": "%s"}\n' \
    "$(($(date +%s) - started))" "$failures" "$([ "$SMOKE" -eq 1 ] && echo true || echo false)" "$OUT"
[ "$failures" -eq 0 ]
