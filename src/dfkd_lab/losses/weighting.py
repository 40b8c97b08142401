"""Named loss terms, weighted by a flat dict from config (``loss.weights.NAME=value``); the
names are those of losses/registry.py."""

import torch


class UnknownLossWeight(KeyError):
    pass


def check_weights(weights: dict, known: set[str], owner: str):
    unknown = sorted(set(weights) - known)
    if unknown:
        raise UnknownLossWeight(
            f"loss.weights has {unknown} which {owner} does not use; its terms are {sorted(known)}"
        )


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict) -> torch.Tensor:
    """Sum of weight * term for every term present; a term must have a weight."""
    total = 0.0
    for name, value in terms.items():
        total = total + float(weights[name]) * value
    return total

