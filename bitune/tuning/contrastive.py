"""Supervised contrastive loss on the pooled features (Khosla et al. 2020; Gunel et al. 2021).

Cross-entropy only asks the head to separate the classes; the contrastive term also pulls the
encoder's pooled features of same-label rows together and pushes other labels away, the geometry a
sentence-embedding checkpoint (cosine similarity) was pretrained for. In-batch, so it costs no extra
forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows with a same-label partner of −mean log p(positive | anchor) under a softmax
    of cosine similarities / temperature over the other rows of the batch; 0 when no row has one."""
    z = F.normalize(features.float(), dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    anchored = counts > 0
    if not bool(anchored.any()):
        return z.sum() * 0.0  # keeps the graph: backward still reaches every feature with a zero
    per_row = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchored] / counts[anchored]
    return -per_row.mean()
