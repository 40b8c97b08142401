"""Distillation from a proxy dataset (``method=kd_proxy``), and proxy images as a pool's seed.

``method=kd_proxy`` distils from unlabelled images of another dataset (``proxy=NAME``) that
the teacher labels: the proxy fills the pool once and the student trains on augmented
(optionally mixed-up) draws from it, in the data-free loop with its cost accounting (teacher
forwards; ``proxy/images`` in the metrics). With any other pool method, ``proxy=NAME`` seeds
the pool with the proxy's images before synthesis starts (the hybrid), labelled with the
teacher's probabilities where the method stores soft targets with its images.
"""

import torch
from torch.nn import functional as F

from ..config import ConfigError
from ..data.proxy import check_not_own_data, load_proxy
from ..models.modes import eval_mode
from .pool import PoolSynthesizer


@torch.no_grad()
def teacher_probabilities(teacher, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """The teacher's class probabilities for ``images`` (in batches), and the forwards it took."""
    device = next(teacher.parameters()).device
    with eval_mode(teacher):
        chunks = [F.softmax(teacher(x.to(device)).float(), dim=1).cpu() for x in images.split(batch_size)]
    return torch.cat(chunks), len(chunks)


def seed_pool_with_proxy(synthesizer, cfg, data, teacher, cost) -> dict:
    """Put the proxy's images in ``synthesizer``'s pool; return what the run records of it. A
    pool that keeps soft targets (ZSKD, Wang 2021) gets the teacher's probabilities for them,
    and those teacher forwards go into the run's ``cost``."""
    proxy = cfg.proxy
    if not isinstance(synthesizer, PoolSynthesizer):
        raise ConfigError(f"proxy= (proxy.name={proxy.name}) seeds a pool, but method={cfg.method.name} keeps no image "
                          "pool; use method=kd_proxy or a pool method (e.g. nayer, cmi, fastdfkd)")
    check_not_own_data(proxy, cfg.data)
    images = load_proxy(proxy, data, cfg.seed)
    soft_targets = None
    if synthesizer.stores_soft_targets:
        soft_targets, forwards = teacher_probabilities(teacher, images, cfg.method.synthesis.batch_size)
        cost.add(teacher_forwards=forwards)
    synthesizer.seed_pool(images, soft_targets)
    return {"proxy/images": float(len(images))}


class ProxyReplay(PoolSynthesizer):
    """The pool holds the proxy (filled by ``seed_pool_with_proxy``); nothing is synthesised.
    The pool is left out of checkpoints: it is rebuilt from the proxy when a run resumes."""

    def __init__(self, **pool):
        super().__init__(save_transfer_set=False, **pool)

    def bind_run(self, cfg):
        if cfg.get("proxy") is None:
            raise ConfigError("method=kd_proxy needs proxy=NAME (conf/proxy/, e.g. proxy=cifar10_gray) "
                              "or proxy.name=... proxy.root=...")

    def synthesize(self, ctx):
        return {}

    def pool_state(self):
        return {"pool": None}  # bind_run's seeding refills it on resume
