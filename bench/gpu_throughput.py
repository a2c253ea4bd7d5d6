"""Bottom-phase training throughput and MFU for a BERT-base-sized encoder, through bitune's own pieces.

A randomly initialised BERT (hidden 768, 12 layers, 12 heads, FFN 3072) at a fixed sequence length,
trained the way the bottom phase trains it: embeddings + the lowest layers + head trainable, the rest
frozen (no weight gradients), bf16 autocast on CUDA. Random weights are fine: throughput does not
depend on the values. On CPU it runs a tiny config only to check the wiring; MFU is not meaningful
there and is reported as null.

    .venv/bin/python bench/gpu_throughput.py --out bench/results/gpu-throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import PhaseSpec
from bitune.tuning.freezing import freeze_except, set_train_mode, trainable_modules
from bitune.tuning.optim import build_optimizer

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trained-layers", type=int, default=3, help="the bottom phase's layers[0:k]")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        hidden, layers, heads, ffn, seq, batch = 768, 12, 12, 3072, args.seq_len, args.batch_size
        steps, warmup = args.steps, args.warmup_steps
        torch.backends.cuda.matmul.allow_tf32 = True
    else:  # a wiring check only: the same code path on a model a 2-core CPU trains in seconds
        torch.set_num_threads(2)
        hidden, layers, heads, ffn, seq, batch, steps, warmup = 64, 4, 2, 128, 32, 8, 3, 1
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
    model = BituneClassifier(BertModel(config, add_pooling_layer=False), 2, "mean", 0.1).to(device)
    groups = resolve_layer_groups(model.backbone)
    spec = PhaseSpec(
        name="bottom", train=["embeddings", f"layers[0:{trained}]", "head"], lr=5e-5, batch_size=batch
    )
    selected = trainable_modules(model, spec.train, groups)
    trainable = freeze_except(model, selected)
    set_train_mode(model, selected)
    optimizer = build_optimizer(selected, spec, layers)
    ids = torch.randint(1000, 30000, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    samples_per_s = steps * batch / seconds
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
            "precision": "bf16 autocast" if cuda else "fp32",
        },
        "trainable_params": trainable,
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * seq,
        "model_flops_per_sample": flops,
        "achieved_tflops": samples_per_s * flops / 1e12,
        "peak_tflops": peak,
        "mfu": mfu,
        "note": None if cuda else "CPU wiring check on a tiny config: MFU is not meaningful on CPU",
    }
    print(json.dumps(report, indent=2))
    if cuda and peak is None:
        print(f"unknown peak for {name!r}; pass --peak-tflops to get MFU", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
