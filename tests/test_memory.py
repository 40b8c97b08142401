"""Memory and disk stay bounded: a checkpoint holds the pool's index, not its pixels; a resume
re-reads them from the transfer set and never counts an image twice; the paper-scale CIFAR-10
CMI preset fits in 8 GB of host memory beyond the models (docs/memory.md)."""

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch

from conftest import compose_config
from dfkd_lab.callbacks.metrics import peak_memory, reset_peak_memory
from dfkd_lab.data.transfer_set import TransferSetWriter
from dfkd_lab.synthesis.base import CostMeter
from dfkd_lab.synthesis.pool import ImagePool, PoolSynthesizer

LOW, HIGH = torch.tensor([-1.0]), torch.tensor([1.0])
INFO = {"teacher_sha256": "aaa", "teacher": "t"}


class RandomImages(PoolSynthesizer):
    """Makes batches of random images from its own RNG (restored with the checkpoint), so a
    resumed synthesizer makes what an uninterrupted one would."""

    def make(self, ctx):
        images = LOW + torch.rand(ctx.batch_size, 1, 16, 16, generator=self.rng) * (HIGH - LOW)
        return images, torch.softmax(torch.randn(ctx.batch_size, 3, generator=self.rng), 1)


def synthesizer(folder, capacity):
    synth = RandomImages(capacity=capacity)
    synth.setup((1, 16, 16), 3, (LOW, HIGH), teacher=None)
    synth.transfer_set = TransferSetWriter(folder, INFO)  # what bind_run opens in a run
    return synth


def saved_size(state) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def draws(pool):
    return pool.sample(32, torch.Generator().manual_seed(5))


def test_a_checkpoint_does_not_grow_with_the_pool(tmp_path):
    synth, ctx = synthesizer(tmp_path, capacity=10_000), SimpleNamespace(batch_size=64, cost=CostMeter())
    synth.synthesize(ctx)
    small = saved_size(synth.get_extra_state())
    for _ in range(20):
        synth.synthesize(ctx)
    assert len(synth.pool) == 21 * 64
    assert saved_size(synth.get_extra_state()) == small  # the same few numbers, whatever the pool holds
    assert small < 64 * 256 * 4  # smaller than one batch's pixels
    without_set = RandomImages(capacity=10_000)
    without_set.pool = synth.pool  # save_transfer_set=false: the pixels have nowhere else to live
    assert saved_size(without_set.get_extra_state()) > 21 * 64 * 256 * 4


def test_a_resume_drops_the_shards_made_after_the_checkpoint_and_rebuilds_the_pool(tmp_path):
    ctx = SimpleNamespace(batch_size=8, cost=CostMeter())
    whole = synthesizer(tmp_path / "whole", capacity=20)
    killed = synthesizer(tmp_path / "killed", capacity=20)
    for _ in range(3):
        whole.synthesize(ctx)
        killed.synthesize(ctx)
    checkpoint = killed.get_extra_state()
    for _ in range(2):  # made after the checkpoint, then SIGKILL
        killed.synthesize(ctx)
    assert len(list((tmp_path / "killed").glob("shard_*.pt"))) == 5

    resumed = synthesizer(tmp_path / "killed", capacity=20)
    resumed.set_extra_state(checkpoint)
    assert sorted(p.name for p in (tmp_path / "killed").glob("shard_*.pt")) == [f"shard_0000{i}.pt" for i in range(3)]
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["images"] == 24
    assert len(resumed.pool) == 20 and all(torch.equal(a, b) for a, b in zip(draws(whole.pool), draws(resumed.pool)))

    made = 24
    for _ in range(3):  # the ring wraps again after the resume
        whole.synthesize(ctx)
        resumed.synthesize(ctx)
        made += 8
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["images"] == made == sum(manifest["shards"].values()) and len(manifest["shards"]) == 6
    assert all(torch.equal(a, b) for a, b in zip(draws(whole.pool), draws(resumed.pool)))
    assert torch.equal(whole.pool.newest(20), resumed.pool.newest(20))


class RandomImagesNoTargets(RandomImages):
    def make(self, ctx):
        return super().make(ctx)[0], None


class RandomImagesWithTargets(RandomImages):
    stores_soft_targets = True


@pytest.mark.parametrize("capacity", [100, 30])  # the seed held whole, and partly pushed out of the ring
@pytest.mark.parametrize("kind", [RandomImagesNoTargets, RandomImagesWithTargets])
def test_a_pool_seeded_with_proxy_images_resumes_with_them(tmp_path, capacity, kind):
    """The transfer set holds only the images made; the seed (a proxy's images, the hybrid,
    with soft targets where the pool keeps them) comes back from the resumed run's own seeding."""
    ctx = SimpleNamespace(batch_size=8, cost=CostMeter())
    seed = LOW + torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * (HIGH - LOW)
    seed_targets = torch.softmax(torch.randn(20, 3, generator=torch.Generator().manual_seed(2)), 1)

    def seeded(folder):
        synth = kind(capacity=capacity)
        synth.setup((1, 16, 16), 3, (LOW, HIGH), teacher=None)
        synth.transfer_set = TransferSetWriter(folder, INFO)
        synth.seed_pool(seed, seed_targets if kind.stores_soft_targets else None)
        return synth

    whole, killed = seeded(tmp_path / "whole"), seeded(tmp_path / "killed")
    for _ in range(2):
        whole.synthesize(ctx)
        killed.synthesize(ctx)
    checkpoint = killed.get_extra_state()
    killed.synthesize(ctx)
    resumed = seeded(tmp_path / "killed")
    resumed.set_extra_state(checkpoint)
    assert len(resumed.pool) == min(36, capacity)
    assert torch.equal(whole.pool.newest(len(whole.pool)), resumed.pool.newest(len(resumed.pool)))
    whole_targets, resumed_targets = whole.pool.state_dict()["soft_targets"], resumed.pool.state_dict()["soft_targets"]
    assert (whole_targets is None) == (resumed_targets is None) == (not kind.stores_soft_targets)
    assert whole_targets is None or torch.equal(whole_targets, resumed_targets)
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["images"] == 16  # the seed is not made


def test_each_rank_rereads_its_own_part_of_a_shard(tmp_path):
    writer = TransferSetWriter(tmp_path, INFO)
    images = torch.arange(6.0).view(6, 1, 1, 1)  # three ranks' batches of two, in rank order
    writer.write(images, None, LOW, HIGH, {})
    part, soft = writer.read(0, part=1, parts=3)
    assert part.flatten().tolist() == [2.0, 3.0] and soft is None


def test_a_writer_opened_before_another_process_wrote_the_shards_keeps_their_manifest(tmp_path):
    stale = TransferSetWriter(tmp_path, INFO)  # the main process before a DDP spawn: an empty folder then
    spawned = TransferSetWriter(tmp_path, INFO)
    for _ in range(3):
        spawned.write(torch.zeros(4, 1, 2, 2), None, LOW, HIGH, {})
    stale.truncate(3)  # the state handed back counts all three
    assert json.loads((tmp_path / "manifest.json").read_text())["images"] == 12 and stale.next_index == 3
    stale.truncate(2)
    assert json.loads((tmp_path / "manifest.json").read_text())["images"] == 8 and stale.next_index == 2


def test_the_paper_scale_cifar10_cmi_preset_fits_in_8_gb_beyond_the_models():
    """The whole run's pool index filled, without its pixels (zero-size images), then the
    arithmetic on what the pixels and the contrastive memory bank take."""
    from dfkd_lab.models.registry import build_model

    cfg = compose_config(["experiment=cifar10_cmi"])
    method = cfg.method
    made = method.epochs * method.synthesis.steps_per_epoch * method.synthesis.batch_size
    assert made == 200 * 20 * 256
    pool = ImagePool(method.synthesizer.capacity)
    for _ in range(made // method.synthesis.batch_size):
        pool.add(torch.empty(method.synthesis.batch_size, 0))
    assert len(pool) == method.synthesizer.capacity == 200_000 < made

    synth = hydra.utils.instantiate(method.synthesizer, _convert_="all")
    synth.setup((3, 32, 32), 10, (torch.zeros(3), torch.ones(3)), build_model("resnet34", num_classes=10))
    image_bytes = 3 * 32 * 32 * 4  # float32, no soft targets for CMI
    pool_peak = (len(pool) + 2**17) * image_bytes  # the last growth copies 131072 rows into 200000
    bank_dim = synth.head[0].in_features  # the BN channels of resnet34, one mean each
    bank = method.synthesizer.bank_size * bank_dim * 4
    head = sum(p.numel() for p in synth.head.parameters()) * 4 * 4  # weights, gradients, Adam's two moments
    assert [round(x / 2**30, 2) for x in (pool_peak, bank, head)] == [3.79, 1.3, 1.1]  # docs/memory.md
    assert pool_peak + bank + head < 8 * 2**30


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux: the peak is reset through /proc")
def test_a_runs_peak_memory_does_not_carry_an_earlier_jobs_peak():
    """The jobs of a -m sweep run in one process: each job's mem/peak_mb starts from its own start."""
    held = bytearray(1024 * 2**20)
    held[::4096] = b"x" * len(held[::4096])  # touched: resident
    del held
    before = peak_memory()["mem/peak_mb"]
    reset_peak_memory()
    assert peak_memory()["mem/peak_mb"] < before - 900


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux: VmHWM")
def test_a_started_process_does_not_report_its_launchers_memory_as_its_peak():
    """ru_maxrss keeps the RSS a process had when exec'ed (its launcher's): a benchmark cell
    started from a large process would report at least that."""
    script = "from dfkd_lab.callbacks.metrics import peak_memory; print(peak_memory()['mem/peak_mb'])"
    held = bytearray(2560 * 2**20)
    held[::4096] = b"x" * len(held[::4096])
    launcher_mb = peak_memory()["mem/peak_mb"]  # this process: torch and 2.5 GB more
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(child.stdout) < launcher_mb - 1500  # the child's own (its imports: under 1 GB)
