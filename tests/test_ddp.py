"""DDP on CPU (trainer=ddp_sim: two gloo processes): per-rank synthesis, BN statistics of the
global batch, metrics reduced over ranks, one transfer set written by rank zero."""

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy

from dfkd_lab.build import build_data, build_module, build_student, build_teacher, trainer_kwargs
from dfkd_lab.data.transfer_set import load_transfer_set, teacher_sha256
from dfkd_lab.losses.bn import batch_stats, bn_stat_loss
from dfkd_lab.methods import base
from dfkd_lab.methods.base import DistillationModule
from dfkd_lab.synthesis.bn_hooks import _global_stats

# --- BN statistics over the global batch ---------------------------------------------------------
FULL = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1
RUNNING_MEAN, RUNNING_VAR = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])


def _bn_loss(x):
    return bn_stat_loss(*_global_stats(x), RUNNING_MEAN, RUNNING_VAR)


def _two_rank_worker(rank, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["DFKD_TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x = FULL[4 * rank: 4 * rank + 4].clone().requires_grad_()
        mean, var = _global_stats(x)
        _bn_loss(x).backward()
        torch.save({"mean": mean.detach(), "var": var.detach(), "grad": x.grad}, Path(folder) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bn_statistics_under_ddp_are_those_of_the_global_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_TEST_PORT", str(free_port()))
    torch.multiprocessing.spawn(_two_rank_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    full = FULL.clone().requires_grad_()
    mean, var = batch_stats(full)
    _bn_loss(full).backward()
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["mean"], mean.detach())
        torch.testing.assert_close(got["var"], var.detach())
        # each rank's pixels get the single-process gradient, not world_size times it
        torch.testing.assert_close(got["grad"], full.grad[4 * r: 4 * r + 4])


# --- whole runs under trainer=ddp_sim -----------------------------------------------------------
TINY = {
    "dafl": ["method=dafl", "teacher=lenet5_bn_fmnist", "method.synthesizer.ngf=4", "method.synthesizer.nz=8"],
    "deepinversion": ["method=deepinversion", "method.synthesizer.iterations=3"],
}
COMMON = ["trainer=ddp_sim", "method.synthesis.steps_per_epoch=3", "method.synthesis.batch_size=16", "method.synthesis.student_steps=2",
          "trainer.limit_train_batches=null", "trainer.limit_test_batches=null"]


class RecordBatch(pl.Callback):
    """Save each rank's first synthetic batch (module-level: DDP spawn pickles callbacks)."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            synthesizer = pl_module.synthesizer
            cache = getattr(synthesizer, "_cache", None)
            images = cache.images if cache is not None else synthesizer.pool.newest(16)
            torch.save(images.cpu(), Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("method", [m if m == "dafl" else pytest.param(m, marks=pytest.mark.slow) for m in sorted(TINY)])
def test_ddp_sim_synthesises_per_rank_and_reduces_metrics_over_ranks(compose_cfg, tmp_path, method):
    cfg = compose_cfg(*TINY[method], *COMMON)
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False, callbacks=[RecordBatch(str(tmp_path))])
    data.setup("fit")
    trainer.fit(module, module.train_dataloader_from(data), data.val_dataloader())
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0.shape == rank1.shape == (16, 1, 32, 32)
    assert not torch.equal(rank0, rank1)

    # the test accuracy reduced over two ranks (each sees half the test split) equals a
    # single process's on the whole split, for the student the DDP run trained
    ddp_acc = trainer.test(module, data.test_dataloader(), verbose=False)[0]["test/acc"]
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single_acc = single.test(module, data.test_dataloader(), verbose=False)[0]["test/acc"]
    assert ddp_acc == pytest.approx(single_acc, abs=1e-6)

    if method == "deepinversion":  # rank zero wrote every rank's batches, one shard per step
        folder = Path(cfg.paths.output_dir) / "transfer_set"
        images, _, manifest = load_transfer_set(folder, teacher_sha256(cfg))
        assert manifest["images"] == images.shape[0] == 3 * 2 * 16
        assert sorted(p.name for p in folder.iterdir()) == [
            "manifest.json", "shard_00000.pt", "shard_00001.pt", "shard_00002.pt"]
        # in rank order, the floats each rank's pool holds: a resume gives each rank its part back
        first = torch.load(folder / "shard_00000.pt")["images"]
        assert torch.equal(first[:16], rank0) and torch.equal(first[16:], rank1)


# --- process-group lifetime -------------------------------------------------------------------
class _TinyEval(DistillationModule):
    def __init__(self):
        super().__init__(torch.nn.Linear(4, 2), OmegaConf.create({"name": "tiny", "channels_last": False}),
                         OmegaConf.create({"weights": {}}), num_classes=2)


def test_a_gloo_process_group_is_destroyed_at_exit(monkeypatch):
    registered = []
    monkeypatch.setattr(base.atexit, "register", registered.append)
    _TinyEval().setup("test")
    assert registered == []  # not distributed: nothing to tear down

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        _TinyEval().setup("test")
        assert len(registered) == 1
    finally:
        registered[0]() if registered else dist.destroy_process_group()
    assert not dist.is_initialized()


@pytest.mark.slow
def test_repeated_ddp_sim_tests_exit_cleanly():
    """Without the exit hook about one spawned trainer.test in five aborted a rank (SIGABRT)."""
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    for _ in range(10):
        trainer = pl.Trainer(accelerator="cpu", devices=2, logger=False, enable_progress_bar=False,
                             strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo"))
        assert "test/acc" in trainer.test(_TinyEval(), torch.utils.data.DataLoader(data, batch_size=16))[0]
