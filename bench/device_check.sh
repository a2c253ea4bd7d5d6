#!/usr/bin/env bash
# Issue 3's GPU checks in one device call (5 to 9 minutes on an H100), from the repository root:
#
#   .venv/bin/python bench/device_bundle.py pack .gpu --wheels-only     # here, once
#   bash bench/device_check.sh "$OUT"                                    # there (carry .gpu)
#
# 1. b512-compile: the bottom phase of a BERT-base-sized encoder at batch 512, compiled (the MFU
#    target's number as shipped), with what this card's bf16 matmuls deliver and nvidia-smi's clocks
#    and power under load (a card held by its power cap never reaches the datasheet peak);
# 2. b512-bf16-norms: the same with `train.bf16_norms` (LayerNorm in and out in bf16, so the residual
#    stream between layers is bf16, not autocast's fp32): the engine's candidate for the memory-bound
#    third of a step;
# 3. b512-norms-autotune: 2 plus Inductor's max-autotune matmul templates (bias + GELU in the
#    matmul's epilogue);
# 4. b512-norms-l12: 2 with all 12 layers trained (plain fine-tuning through the same engine);
# 5. b512-bf16-weights: bf16 weights without autocast, the upper bound of 2 (not a way to train);
# 6. b512-norms-profile: 2 under torch.profiler (kernels by GPU time, how busy the GPU was).
# Each step has its own time limit and writes its own file, so a slow step loses only itself, and
# a call cut at its limit keeps what finished. The device tool returns at most 8 files: a JSON per
# run, the profile and a log.
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
export PYTHONUNBUFFERED=1
run b512-compile 140 --batch-size 512 --compile --matmul-check
run b512-bf16-norms 110 --batch-size 512 --compile --bf16-norms
run b512-norms-autotune 170 --batch-size 512 --compile --bf16-norms --compile-mode max-autotune-no-cudagraphs
run b512-norms-l12 100 --batch-size 512 --compile --bf16-norms --trained-layers 12
run b512-bf16-weights 100 --batch-size 512 --compile --bf16-weights
run b512-norms-profile 120 --batch-size 512 --compile --bf16-norms --profile "$OUT/profile.txt" --profile-steps 6
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
