"""How far fine-tuning moved the encoder from its pretrained self: weight drift and representation CKA.

Bidirectional fine-tuning trades task accuracy against forgetting. Two cheap, model-agnostic
measures make that trade visible: per-group relative weight drift (which layers moved) and linear
CKA between the tuned and the pretrained encoder on general English (whether what they compute
still agrees). The registry gate compares the CKA; the drift plot goes to the run's artifacts.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bitune.errors import DataError, ModelError
from bitune.model.layer_groups import LayerGroups

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUNDLED_PROBE = "general_english.txt"
MIN_PROBE_CHARS = 40
_HEADING = re.compile(r"^\s*=+\s.*\s=+\s*$")
_WIKITEXT_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def _group_modules(groups: LayerGroups) -> list[tuple[str, list[nn.Module]]]:
    named = [("embeddings", groups.embeddings)]
    named += [(f"layers.{i}", [layer]) for i, layer in enumerate(groups.layers)]
    if groups.extras:
        named.append(("extras", groups.extras))
    if groups.pooler is not None:
        named.append(("pooler", [groups.pooler]))
    return named


def weight_drift(
    pretrained: dict[str, torch.Tensor], backbone: nn.Module, groups: LayerGroups
) -> dict[str, float]:
    """‖θ − θ_pre‖ / ‖θ_pre‖ per group, over all the group's parameters taken together.

    `pretrained` is a cloned state_dict of the backbone before tuning (a plain `state_dict()` shares
    storage with the live weights and would always show 0). Keys run bottom to top: embeddings,
    layers.0 .., extras, pooler (the last two only when the model has them). A group whose
    pretrained weights are all zero reports the absolute change instead.
    """
    names = {id(p): name for name, p in backbone.named_parameters()}
    drift: dict[str, float] = {}
    with torch.no_grad():
        for group, modules in _group_modules(groups):
            diff_sq = torch.zeros((), dtype=torch.float64)
            pre_sq = torch.zeros((), dtype=torch.float64)
            for module in modules:
                for param in module.parameters():
                    name = names.get(id(param))
                    if name is None or name not in pretrained:
                        raise ModelError(
                            f"weight_drift: parameter {name or '?'} of group {group} is missing from the "
                            "pretrained snapshot; snapshot the same backbone before tuning"
                        )
                    now = param.detach().to("cpu", torch.float64)
                    before = pretrained[name].detach().to("cpu", torch.float64)
                    diff_sq += (now - before).pow(2).sum()
                    pre_sq += before.pow(2).sum()
            diff, pre = diff_sq.sqrt().item(), pre_sq.sqrt().item()
            drift[group] = diff / pre if pre > 0 else diff
    return drift


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) of two (rows, features) matrices over the same rows.

    Feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred inputs: 1 for identical
    representations, unchanged by rotations and isotropic scaling, so it compares what two encoders
    represent rather than their coordinates. NaN when either input is constant across rows.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka: need two 2-D inputs with the same rows, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError("linear_cka: need at least 2 rows")
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x).pow(2)
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norm.item() == 0:
        return float("nan")
    return (cross / norm).item()


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _mean_pooled(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked mean of the last hidden state; keys the model's forward does not take are dropped."""
    accepted = inspect.signature(model.forward).parameters
    device = _device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
    hidden = model(**inputs)[0].float()
    mask = inputs.get("attention_mask")
    if mask is None:
        return hidden.mean(dim=1).cpu()
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu()


def encoder_cka(
    backbone: nn.Module, reference: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> float:
    """Linear CKA between two encoders' mean-pooled last hidden states on the same batches.

    Runs both in eval mode without gradients, each on its own device, and puts every submodule's
    train/eval flag back afterwards. Batches are tokenizer outputs; extra keys (labels) are ignored.
    """
    flags = {m: m.training for model in (backbone, reference) for m in model.modules()}
    ours: list[torch.Tensor] = []
    theirs: list[torch.Tensor] = []
    try:
        backbone.eval()
        reference.eval()
        with torch.inference_mode():
            for batch in batches:
                ours.append(_mean_pooled(backbone, batch))
                theirs.append(_mean_pooled(reference, batch))
    finally:
        for module, training in flags.items():
            module.training = training
    if not ours:
        raise ValueError("encoder_cka: no batches to compare on")
    return linear_cka(torch.cat(ours), torch.cat(theirs))


def _clean(line: str) -> str:
    """Undo wikitext's tokenised joins (" @-@ " -> "-"), trim whitespace."""
    for token, joined in _WIKITEXT_JOINS:
        line = line.replace(token, joined)
    return line.strip()


def probe_path(probe_file: str | None, root: Path) -> str | None:
    """`forgetting.probe_file` as a path: a relative one is in the project, like the other folders the
    params name, whichever folder `bitune run` was started in (distributed ranks run in the project)."""
    return None if probe_file is None else str(root / Path(probe_file).expanduser())


def check_probe_file(path: str | None) -> None:
    """The probe file is there to read, said before the data step; its text is read (and judged) only
    when the first phase's CKA needs it, so a pipe or a file still being written is left alone."""
    if path is None:
        return
    probe = Path(path)
    if not probe.exists() or probe.is_dir():
        raise DataError(
            f"{path}: probe text file not found; fix forgetting.probe_file or set it to null for the "
            "bundled sample"
        )
    if not os.access(probe, os.R_OK):
        raise DataError(
            f"{path}: probe text file cannot be read; fix its permissions or forgetting.probe_file"
        )


def load_probe_texts(path: str | None, rows: int) -> list[str]:
    """The first `rows` prose lines of a general-English file (None: the bundled sample).

    Blank lines, wikitext " = Heading = " lines and lines under 40 characters are skipped, so the
    raw wikitext-2 `wiki.test.tokens` works as is. Deterministic: same file, same texts.
    """
    if path is None:
        source = resources.files("bitune").joinpath("resources", BUNDLED_PROBE)
        text = source.read_text(encoding="utf-8")
        where = f"bundled {BUNDLED_PROBE}"
    else:
        where = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DataError(
                f"{path}: probe text file not found; fix forgetting.probe_file or set it to null "
                "for the bundled sample"
            ) from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; point forgetting.probe_file at a UTF-8 file") from None
    texts: list[str] = []
    for raw in text.splitlines():
        if len(texts) >= rows:
            break
        if _HEADING.match(raw):
            continue
        line = _clean(raw)
        if len(line) >= MIN_PROBE_CHARS:
            texts.append(line)
    if not texts:
        raise DataError(
            f"{where}: no line of {MIN_PROBE_CHARS}+ characters; point forgetting.probe_file at English prose"
        )
    return texts


def probe_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, batch_size: int = 32
) -> list[dict[str, torch.Tensor]]:
    """The probe texts as padded batches for `encoder_cka`, cut at the length the model trains on."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def _x_order(name: str) -> tuple[int, int, str]:
    """Bottom to top: embeddings, layers.0 .., extras, pooler, anything else."""
    if name == "embeddings":
        return (0, 0, name)
    prefix, _, index = name.partition(".")
    if prefix == "layers" and index.isdigit():
        return (1, int(index), name)
    return (2, {"extras": 0, "pooler": 1}.get(name, 2), name)


DRIFT_PLOT = "drift_per_layer.png"


def plot_drift(drift_by_phase: dict[str, dict[str, float]], path: Path) -> Path:
    """One PNG: relative weight drift per group, bottom to top, one line per phase label.

    Draws on a bare matplotlib Figure (Agg canvas), so it never touches pyplot's global state or the
    process-wide backend and is safe in worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = sorted({g for drift in drift_by_phase.values() for g in drift}, key=_x_order)
    figure = Figure(figsize=(max(6.0, 0.5 * len(groups) + 2), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, drift in drift_by_phase.items():
        xs = [i for i, g in enumerate(groups) if g in drift]
        axes.plot(xs, [drift[groups[i]] for i in xs], marker="o", label=label)
    axes.set_xticks(range(len(groups)), groups, rotation=45, ha="right")
    axes.set_xlabel("group (bottom → top)")
    axes.set_ylabel("‖θ − θ_pre‖ / ‖θ_pre‖")
    axes.set_title("Weight drift from the pretrained encoder")
    if drift_by_phase:
        axes.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path
