"""Which scaled-dot-product-attention kernel is fastest for a BERT-base step's shape, forward + backward.

The H100 profile of 2026-11-27 put cuDNN's attention at ~16% of a bottom-phase step although
attention is under 3% of its FLOPs: at sequence length 128 and head size 64 the kernels are far from
the memory bound. This times each backend PyTorch offers on the engine's shape, with the padding
mask the encoder passes (bool, broadcast over heads and queries) and without one (FlashAttention
takes no mask), so a step's attention can be given to the fastest one.

    python3 bench/attention_backends.py --out bench/results/attention-h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def time_backend(
    backend: SDPBackend,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    reps: int,
) -> float | str:
    """Milliseconds of one forward + backward, or why the backend refused."""
    grad = torch.randn_like(q)

    def step() -> None:
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.backward(grad)

    try:
        for _ in range(3):
            step()
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:160]
    if q.device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = args.batch_size if cuda else 2  # a wiring check only on CPU
    shape = (batch, args.heads, args.seq_len, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    padding = torch.ones(batch, args.seq_len, dtype=torch.bool, device=device)
    padding[:, -args.seq_len // 4 :] = False  # a quarter padded: the mask is not all ones
    mask = padding[:, None, None, :].expand(batch, 1, args.seq_len, args.seq_len)
    results = {}
    for name, backend in BACKENDS.items():
        for masked in (True, False):
            ms = time_backend(backend, q, k, v, mask if masked else None, args.reps)
            results[f"{name}{'+mask' if masked else ''}"] = ms
    print(f"{'backend':16} {'fwd+bwd ms':>10}")
    for name, ms in results.items():
        print(f"{name:16} {ms:10.3f}" if isinstance(ms, float) else f"{name:16} refused: {ms}")
    report = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "shape": list(shape),
        "ms_forward_backward": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
