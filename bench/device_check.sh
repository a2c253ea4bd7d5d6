#!/usr/bin/env bash
# Issue 3's GPU checks in one device call (5 to 9 minutes on an H100), from the repository root:
#
#   .venv/bin/python bench/device_bundle.py pack .gpu --wheels-only     # here, once
#   bash bench/device_check.sh "$OUT"                                    # there (carry .gpu)
#
# 1. b512-bf16-norms: the bottom phase of a BERT-base-sized encoder at batch 512, compiled, with
#    `train.bf16_norms` (33.3% MFU on the H100 of 2026-11-27 night), and what this card's bf16
#    matmuls deliver, with nvidia-smi's clocks and power under load (a card held by its power cap
#    never reaches the datasheet peak);
# 2. b512-norms-autotune: 1 plus Inductor's max-autotune matmul templates, which can put GELU (and
#    its derivative) in the matmul's epilogue: the FFN activation then never makes the round trip
#    through memory that now costs 11% of a step. It did not finish compiling in 170 s last time;
# 3. b512-no-norms: 1 without `bf16_norms`, the ratio's baseline on the same card;
# 4. b512-norms-l12: 1 with all 12 layers trained (plain fine-tuning through the same engine).
# Each step has its own time limit and writes its own file, so a slow step loses only itself, and a
# call cut at its limit keeps what finished. The device tool returns at most 8 files.
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
run b512-bf16-norms 140 --batch-size 512 --compile --bf16-norms --matmul-check
run b512-norms-autotune 280 --batch-size 512 --compile --bf16-norms --compile-mode max-autotune-no-cudagraphs
run b512-no-norms 110 --batch-size 512 --compile --no-bf16-norms
run b512-norms-l12 150 --batch-size 512 --compile --bf16-norms --trained-layers 12
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
