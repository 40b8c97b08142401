"""Named loss terms, weighted by a flat dict from config (``loss.weights.NAME=value``)."""

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


def active(weights: dict, *names) -> list[str]:
    """The names whose weight is non-zero: terms worth computing."""
    return [n for n in names if float(weights.get(n, 0.0)) != 0.0]
