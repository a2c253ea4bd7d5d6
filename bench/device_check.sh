#!/usr/bin/env bash
# Issue 3's GPU checks in one device call (4 to 9 minutes on an H100), from the repository root:
#
#   .venv/bin/python bench/device_bundle.py pack .gpu --wheels-only     # here, once
#   bash bench/device_check.sh "$OUT"                                    # there (carry .gpu)
#
# 1. what this card's bf16 matmuls deliver, with nvidia-smi's clocks and power under load (a card
#    held by its power cap never reaches the datasheet peak that MFU divides by);
# 2. the bottom phase of a BERT-base-sized encoder at batch 512, compiled: the MFU target's number;
# 3. the same under torch.profiler: kernels by GPU time, and how busy the GPU was in a step;
# 4. all 12 layers trained (plain fine-tuning through the same engine), for comparison;
# 5. the two candidates for the memory-bound third of a step, each an upper bound measured against 2:
#    Inductor's max-autotune matmul templates (bias + GELU in the matmul epilogue), and bf16 weights
#    without autocast (LayerNorm and the residual stream in bf16 instead of fp32).
# Each step has its own time limit and writes its own file, so a slow step loses only itself. The
# device tool returns few files: everything lands in seven (a JSON per run, the profile, a log).
set -u
OUT=${1:?usage: bench/device_check.sh OUT_FOLDER}
mkdir -p "$OUT"
LOG="$OUT/device-check.log"
python3 -m pip install --quiet --no-index --no-deps --target /tmp/bitune-site .gpu/whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/bitune-site:$PWD
{
  date -u +%FT%TZ
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)"
  nvidia-smi -q -d CLOCK,POWER,PERFORMANCE
} >>"$LOG" 2>&1
run() {  # name, time limit in seconds, gpu_throughput.py arguments...
  local name=$1 limit=$2
  shift 2
  echo "== $name: gpu_throughput.py $*" >>"$LOG"
  timeout "$limit" python3 bench/gpu_throughput.py "$@" --out "$OUT/$name.json" >>"$LOG" 2>&1 \
    || echo "== $name: exit $?" >>"$LOG"
}
# the candidates right after the baseline: a device call cut at its limit keeps what finished
run b512-compile 150 --batch-size 512 --compile --matmul-check
run b512-bf16-weights 120 --batch-size 512 --compile --bf16-weights
run b512-autotune 200 --batch-size 512 --compile --compile-mode max-autotune-no-cudagraphs
run b512-profile 150 --batch-size 512 --compile --profile "$OUT/profile.txt" --profile-steps 6
run b512-all-layers 120 --batch-size 512 --trained-layers 12 --compile
python3 - "$OUT" <<'PY' | tee -a "$LOG"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    busy = (r.get("profile") or {}).get("gpu_busy_share")
    mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "no MFU (not a known GPU)"
    print(f"{path.stem:16} {r['device']}: {r['samples_per_s']:,.0f} samples/s, {mfu}"
          + (f", {r['mfu_of_attainable']:.0%} of the card's {r['attainable_tflops']:.0f} TFLOP/s" if r.get("attainable_tflops") else "")
          + (f", GPU busy {busy:.0%}" if busy else ""))
PY
