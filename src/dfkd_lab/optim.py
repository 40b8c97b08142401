"""The student's optimiser and learning-rate schedule, by the names ``method.optimizer`` and
``method.schedule`` take (validate.py checks the names before a run starts)."""

from functools import partial

import torch


def one_cycle(step: int, total_steps: int, peak_at: float = 0.23, start: float = 0.2, end: float = 0.07) -> float:
    """The learning-rate factor of a short run: linear from ``start`` up to 1 over the first
    ``peak_at`` of the steps, then linear down to ``end`` (a few-epoch teacher recipe)."""
    peak = peak_at * total_steps
    if step < peak:
        return start + (1 - start) * step / peak
    return 1 + (end - 1) * min(1.0, (step - peak) / (total_steps - peak))


SCHEDULES = {
    "cosine": lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    "constant": lambda opt, steps: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
    "one_cycle": lambda opt, steps: torch.optim.lr_scheduler.LambdaLR(opt, partial(one_cycle, total_steps=steps)),
}
OPTIMIZERS = {
    "sgd": lambda params, m: torch.optim.SGD(params, lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay,
                                             nesterov=m.nesterov),
    "adam": lambda params, m: torch.optim.Adam(params, lr=m.lr, weight_decay=m.weight_decay),
}


def network_groups(net, *companions) -> list[dict]:
    """A network's parameter groups for the optimiser: its own (``parameter_groups()``, where a
    group may ask for an ``lr_scale``; the last is at the plain rate) or, by default, one group of
    all its parameters. ``companions``, modules trained beside it (KD's projections, DFQ's peers),
    join its last group, so a plain network keeps one group."""
    groups = net.parameter_groups() if hasattr(net, "parameter_groups") else [{"params": list(net.parameters())}]
    groups[-1]["params"] = [*groups[-1]["params"], *(p for m in companions for p in m.parameters())]
    return groups


def scaled_groups(params, method) -> list:
    """A network's parameter groups with their ``lr_scale`` applied: that multiple of
    ``method.lr``, and the weight decay divided by it, so the decay per step stays the same."""
    groups = []
    for group in params:
        if isinstance(group, dict) and "lr_scale" in group:
            group = {**group, "lr": method.lr * group["lr_scale"],
                     "weight_decay": method.weight_decay / group["lr_scale"]}
        groups.append(group)
    return groups


def build_optimizer(params, method):
    if method.optimizer not in OPTIMIZERS:
        raise ValueError(f"method.optimizer={method.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[method.optimizer](scaled_groups(params, method), method)


def build_schedule(optimizer, method, total_steps: int):
    if method.schedule not in SCHEDULES:
        raise ValueError(f"method.schedule={method.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[method.schedule](optimizer, max(1, total_steps))
