"""Dynamic padding with length-grouped batches: pad each batch only to its own longest text.

Texts of similar length are batched together (shuffled in mega-batches so order stays random),
which on short-text data like SST-2 cuts the padded tokens the encoder processes several-fold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MEGA_BATCH = 50


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, min_rows: int = 1
) -> list[list[int]]:
    """Index batches; with shuffle, random mega-batches sorted by length inside, batch order shuffled.

    `min_rows` (the process count under DDP): a last short batch with fewer rows than that joins
    the batch before it, so every process gets at least one row of every batch.
    """
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    span = batch_size * MEGA_BATCH
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_rows:
        batches[-2].extend(batches.pop())
    rng.shuffle(batches)
    return batches


def batch_count(rows: int, batch_size: int, min_rows: int = 1) -> int:
    """How many batches `length_grouped_batches` makes of `rows` rows (with shuffle)."""
    count = math.ceil(rows / batch_size)
    merged = count > 1 and 0 < rows % batch_size < min_rows
    return count - merged


@dataclass(frozen=True)
class MicroBatch:
    """This process's share of one batch, and the factor on its mean loss.

    `weight` = processes · rows here / rows in the accumulation window (all processes): DDP averages
    the processes' gradients, so the optimizer step then sees the window's mean gradient over its
    rows, exactly what one process would compute on the whole window in one batch, whatever the
    sizes of its batches (a short last batch, a short last window) or their split across processes.
    """

    rows: list[int]
    weight: float
    batch_rows: int  # rows of the whole batch (all processes together)


def shard_batches(
    batches: list[list[int]], grad_accum: int, processes: int = 1, rank: int = 0
) -> list[MicroBatch]:
    """Every batch split into `processes` contiguous, near-equal slices; this process keeps its own.

    Every process gets a slice of every batch, so all step in lockstep and no row is dropped or
    repeated: unlike accelerate's batch sharding, which skips a short batch that is not the last
    and pads the last by repeating rows.
    """
    plan = []
    for start in range(0, len(batches), grad_accum):
        window = batches[start : start + grad_accum]
        window_rows = sum(len(b) for b in window)
        for batch in window:
            base, extra = divmod(len(batch), processes)
            begin = rank * base + min(rank, extra)
            mine = batch[begin : begin + base + (rank < extra)]
            plan.append(MicroBatch(mine, processes * len(mine) / window_rows, len(batch)))
    return plan


def pad_batch(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids`/`attention_mask` to the batch's longest row; stack `labels`."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.as_tensor(row["input_ids"])
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "labels" in rows[0]:
        batch["labels"] = torch.as_tensor([r["labels"] for r in rows], dtype=torch.long)
    return batch


class BatchList(torch.utils.data.Sampler[list[int]]):
    """A fixed list of index batches as a batch sampler (already this process's share under DDP)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
