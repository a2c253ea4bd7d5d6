"""Bottom-phase training throughput and MFU for a BERT-base-sized encoder, through bitune's engine.

A randomly initialised BERT (hidden 768, 12 layers, 12 heads, FFN 3072) at a fixed sequence length is
trained by `run_phase` itself, exactly as the bottom phase trains: embeddings + the lowest layers +
head trainable, the rest frozen (no weight gradients), the anchor gradient on, bf16 autocast on CUDA.
The first epoch is the warm-up (CUDA context, cuBLAS heuristics, torch.compile if asked); the second
epoch's training-loop samples/s is the result. Random weights are fine: throughput does not depend on
the values. On CPU it runs a tiny config only to check the wiring; MFU is not meaningful there.

    .venv/bin/python bench/gpu_throughput.py --out bench/results/gpu-throughput.json
    .venv/bin/python bench/gpu_throughput.py --batch-size 256 --compile --out /tmp/gpu.json
    .venv/bin/python bench/gpu_throughput.py --batch-size 512 --compile --profile /tmp/prof.txt

`--profile FILE` diagnoses a low MFU after the timed run, without touching its numbers: the GPU's clocks,
power and throttle reasons (nvidia-smi) before and after, and a `torch.profiler` table of a few more
warm steps, kernels sorted by device time, with the share of wall time the GPU was busy.

`--matmul-check` asks what this particular card delivers before blaming the engine: bf16 TFLOP/s of
a large square matmul and of the model's own FFN matmul at this batch, with nvidia-smi's clocks and
power read while they run. MFU is also reported against that attainable rate, since a card held to a
lower power limit or clock never reaches the datasheet peak. `--static-compile` compiles for fixed
shapes (`dynamic=False`) to measure what the engine's dynamic-shape compile costs.

Two more diagnostics ask where the memory-bound third of a step could go (the H100 profile of
2026-11-27: matmuls at the card's ceiling, the rest element-wise). `--compile-mode max-autotune-no-cudagraphs`
lets Inductor pick Triton matmul templates that fuse bias + GELU into the matmul's epilogue.
`--bf16-weights` trains with the weights themselves in bf16 and no autocast, so LayerNorm and the
residual stream stay bf16 instead of autocast's fp32: an upper bound on what a bf16 residual stream
(fp32 master weights kept by the optimizer) would gain, not a way to train (no fp32 master copy).
The engine's way to get there is `train.bf16_norms` (on by default since 2026-11-27; 1.08x on an
H100): fp32 weights under autocast, LayerNorm reading and writing bf16, so the residual stream
between layers is bf16. `--no-bf16-norms` measures the step without it, for the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from bitune.device import make_accelerator
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import PhaseSpec, TrainParams
from bitune.tuning.bf16_norms import Bf16LayerNorm
from bitune.tuning.phase import PhaseContext, PhaseData, run_phase
from bitune.tuning.schedule import PhaseRun

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "L4": 121.0,
    "4090": 165.0,
    "3090": 71.0,
}


def peak_tflops(device_name: str) -> float | None:
    """Longest matching key wins (so 'H100 PCIe' could be added without shadowing)."""
    matches = [k for k in PEAK_BF16_TFLOPS if k in device_name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def layer_flops(hidden: int, ffn: int, seq: int) -> float:
    """Forward FLOPs of one encoder layer for one sequence: QKV/out projections, FFN, attention."""
    matmuls = 2 * seq * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 2 * 2 * seq * seq * hidden  # QKᵀ and AV
    return float(matmuls + attention)


def bottom_phase_flops(
    hidden: int, ffn: int, seq: int, layers: int, trained_layers: int, labels: int
) -> float:
    """FLOPs per sample of one training step of the bottom phase.

    Forward through all layers (1×); backward carries activation gradients down through every layer
    to the trainable embeddings (1× each) but computes weight gradients only in the trained layers
    (another 1× there). Frozen layers cost 2×, trained ones 3× their forward FLOPs. Embedding
    lookups and norms are ignored (standard for MFU).
    """
    per_layer = layer_flops(hidden, ffn, seq)
    head = 2 * hidden * labels
    return (3 * trained_layers + 2 * (layers - trained_layers)) * per_layer + 3 * head


GPU_STATE_FIELDS = (
    "name,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,"
    "utilization.gpu,clocks_throttle_reasons.active"
)


def gpu_state() -> str | None:
    """One CSV line from nvidia-smi: is the GPU at full clocks, or held back by power or heat?"""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={GPU_STATE_FIELDS}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() or done.stderr.strip()


def kernel_microseconds(events: Iterable[Any]) -> float:
    """GPU time of the kernels alone, as the profiler's own table totals it.

    An aten op's "self device time" is its kernels' time again, so summing every row counts most of
    the GPU's work twice (the first H100 profile read 76% busy that way; the kernels said 98%)."""
    from torch.autograd import DeviceType

    return float(
        sum(
            e.self_device_time_total
            for e in events
            if e.device_type == DeviceType.CUDA and not e.is_user_annotation
        )
    )


def profile_steps(
    model: BituneClassifier, spec: PhaseSpec, data: PhaseData, ctx: PhaseContext, steps: int
) -> dict[str, object]:
    """`steps` more warm optimizer steps of the same phase under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    short = spec.model_copy(update={"epochs": 1, "max_steps": steps})
    before = gpu_state()
    wall = time.perf_counter()
    with profile(activities=activities) as prof:
        run_phase(model, PhaseRun(0, 1, short), data, ctx)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - wall
    events = prof.key_averages()
    kernel_us = kernel_microseconds(events)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return {
        "steps": steps,
        "wall_s": wall,  # includes the phase's set-up and its validation pass: not a step time
        "kernel_s": kernel_us / 1e6,
        "kernel_s_per_step": kernel_us / 1e6 / steps,  # to compare with the timed epoch's step time
        "gpu_state_before": before,
        "gpu_state_after": gpu_state(),
        "table": events.table(sort_by=sort, row_limit=30),
    }


def matmul_tflops(m: int, k: int, n: int, seconds: float = 2.0) -> dict[str, object]:
    """bf16 TFLOP/s of an (m×k)·(k×n) matmul, timed with CUDA events over about `seconds` of work.

    nvidia-smi is read while the queued work runs, so its clocks and power are those under load."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    per_ms = start.elapsed_time(end) / 10
    iterations = max(20, int(seconds * 1000 / max(per_ms, 1e-3)))
    start.record()
    for _ in range(iterations):
        a @ b
    end.record()
    under_load = gpu_state()  # the queue still holds most of the iterations
    torch.cuda.synchronize()
    elapsed_s = start.elapsed_time(end) / 1000
    return {
        "shape": [m, k, n],
        "iterations": iterations,
        "tflops": 2 * m * k * n * iterations / elapsed_s / 1e12,
        "gpu_state_under_load": under_load,
    }


def synthetic_rows(n: int, seq: int, vocab: int, seed: int) -> list[dict[str, object]]:
    """Rows of exactly `seq` tokens (no padding), random ids and labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, seq), generator=generator).tolist()
    labels = torch.randint(0, 2, (n,), generator=generator).tolist()
    return [
        {"input_ids": i, "attention_mask": [1] * seq, "labels": y} for i, y in zip(ids, labels, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trained-layers", type=int, default=3, help="the bottom phase's layers[0:k]")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch (2 epochs run)")
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--profile", type=Path, default=None, help="also write a profile (text) here")
    parser.add_argument("--profile-steps", type=int, default=8, help="warm steps to profile")
    parser.add_argument("--matmul-check", action="store_true", help="measure this card's bf16 matmul rate")
    parser.add_argument("--static-compile", action="store_true", help="with --compile: dynamic=False")
    parser.add_argument("--compile-mode", default=None, help="with --compile: torch.compile's mode")
    parser.add_argument("--bf16-weights", action="store_true", help="bf16 weights, no autocast (upper bound)")
    parser.add_argument(
        "--bf16-norms",
        action=argparse.BooleanOptionalAction,
        default=TrainParams.model_fields["bf16_norms"].default,
        help="train.bf16_norms: bf16 LayerNorm in/out under autocast (default: the engine's)",
    )
    args = parser.parse_args(argv)
    compile_options: dict[str, object] = {}
    if args.static_compile:  # a diagnostic: the engine compiles with dynamic=True (batches vary in length)
        compile_options["dynamic"] = False
    if args.compile_mode:
        compile_options["mode"] = args.compile_mode
    if compile_options:
        engine_compile = torch.compile
        torch.compile = lambda model, **kw: engine_compile(model, **(kw | compile_options))  # type: ignore[assignment]

    cuda = torch.cuda.is_available()
    if cuda:
        hidden, layers, heads, ffn, seq, batch = 768, 12, 12, 3072, args.seq_len, args.batch_size
        steps = args.steps
    else:  # a wiring check only: the same code path on a model a 2-core CPU trains in seconds
        torch.set_num_threads(2)
        hidden, layers, heads, ffn, seq, batch, steps = 64, 4, 2, 128, 32, 8, 3
    trained = min(args.trained_layers, layers)
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max(512, seq),
        vocab_size=30522,
    )
    torch.manual_seed(0)
    model = BituneClassifier(BertModel(config, add_pooling_layer=False), 2, "mean", 0.1)
    if args.bf16_weights:
        model.to(torch.bfloat16)
    groups = resolve_layer_groups(model.backbone)
    spec = PhaseSpec(
        name="bottom",
        train=["embeddings", f"layers[0:{trained}]", "head"],
        epochs=2,
        lr=5e-5,
        warmup=0.1,
        anchor=0.01,
        batch_size=batch,
    )
    # bf16 weights run without autocast: autocast would cast LayerNorm back to fp32
    precision = "fp32" if args.bf16_weights else "auto"
    accelerator = make_accelerator(TrainParams(device="auto", precision=precision))
    pretrained = {n: p.detach().clone().to(accelerator.device) for n, p in model.backbone.named_parameters()}
    ctx = PhaseContext(
        accelerator,
        groups,
        pretrained,
        eval_batch_size=batch,
        progress=False,
        compile=args.compile,
        bf16_norms=args.bf16_norms,
    )
    data = PhaseData(
        synthetic_rows(batch * steps, seq, config.vocab_size, 0),
        synthetic_rows(batch, seq, config.vocab_size, 1),
        pad_token_id=0,
    )
    result = run_phase(model, PhaseRun(0, 1, spec), data, ctx)
    timed = result.history[-1]  # the second epoch: warm
    samples_per_s = timed["train_samples_per_s"]
    flops = bottom_phase_flops(hidden, ffn, seq, layers, trained, 2)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    mfu = samples_per_s * flops / (peak * 1e12) if peak else None
    report = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "config": {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "ffn": ffn,
            "seq_len": seq,
            "batch_size": batch,
            "trained_layers": trained,
            "precision": accelerator.mixed_precision,
            "compile": args.compile,
            "static_compile": args.static_compile,
            "compile_mode": args.compile_mode,
            "bf16_weights": args.bf16_weights,
            "bf16_norms": args.bf16_norms,
            "bf16_norm_modules": sum(isinstance(m, Bf16LayerNorm) for m in model.modules()),
            "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attention": model.backbone.config._attn_implementation,
        },
        "trainable_params": result.trainable_params,
        "steps_per_epoch": steps,
        "warmup_epoch_samples_per_s": result.history[0]["train_samples_per_s"],
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * seq,
        "model_flops_per_sample": flops,
        "achieved_tflops": samples_per_s * flops / 1e12,
        "peak_tflops": peak,
        "mfu": mfu,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "gpu_state": gpu_state() if cuda else None,
        "note": None if cuda else "CPU wiring check on a tiny config: MFU is not meaningful on CPU",
    }
    if args.matmul_check and cuda:
        checks = [matmul_tflops(8192, 8192, 8192), matmul_tflops(batch * seq, hidden, ffn)]
        attainable = max(float(c["tflops"]) for c in checks)  # type: ignore[arg-type]
        report["matmul_check"] = checks
        report["attainable_tflops"] = attainable
        report["mfu_of_attainable"] = samples_per_s * flops / (attainable * 1e12)
    if args.profile:
        model.to(accelerator.device)
        found = profile_steps(model, spec, data, ctx, args.profile_steps if cuda else 2)
        step_s = batch / samples_per_s
        report["profile"] = {k: v for k, v in found.items() if k != "table"} | {
            "file": str(args.profile),
            "timed_step_s": step_s,
            "gpu_busy_share": float(found["kernel_s_per_step"]) / step_s if cuda else None,  # type: ignore[arg-type]
        }
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        args.profile.write_text(
            f"{name} {report['config']}\n{json.dumps(report['profile'], indent=2)}\n\n{found['table']}\n"
        )
    print(json.dumps(report, indent=2))
    if cuda and peak is None:
        print(f"unknown peak for {name!r}; pass --peak-tflops to get MFU", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
