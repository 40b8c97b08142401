"""InfoNCE (van den Oord et al. 2018), the contrastive term of CMI."""

import torch
from torch.nn import functional as F


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over queries of -log softmax(q_i . K / T)[i].

    ``queries`` is (N, D) and ``keys`` is (M, D) with M >= N: key i is the positive of query i,
    every other key (the rest of the batch, then any memory-bank entries) is a negative.
    Both are expected L2-normalised, so q . k is a cosine similarity.
    """
    if keys.shape[0] < queries.shape[0]:
        raise ValueError(f"info_nce needs at least one key per query, got {keys.shape[0]} < {queries.shape[0]}")
    logits = queries.float() @ keys.float().t() / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
