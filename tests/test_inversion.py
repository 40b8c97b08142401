"""Inversion methods: the shared loop, BN hooks, transfer sets on disk, each method end to end."""

import gc
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dfkd_lab.atomic import save_torch
from dfkd_lab.config import ConfigError
from dfkd_lab.data.transfer_set import TransferSetWriter, load_transfer_set
from dfkd_lab.losses import terms
from dfkd_lab.synthesis.base import CostMeter, SynthContext
from dfkd_lab.synthesis.bn_hooks import BNStatHooks
from dfkd_lab.synthesis.inversion import InversionSynthesizer
from dfkd_lab.synthesis.objectives import (
    ClassTargets,
    DirichletTargets,
    FeatureGaussian,
    balanced_pick,
)
from dfkd_lab.train import run
from dfkd_lab.zoo import freeze, zoo_entry

LOW, HIGH = torch.tensor([-1.0]).view(1, 1, 1, 1), torch.tensor([2.0]).view(1, 1, 1, 1)


class Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.classifier = nn.Linear(2, classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_teacher():
    torch.manual_seed(0)
    teacher = Tiny()
    teacher.bn.running_mean.copy_(torch.tensor([0.5, -0.25]))
    teacher.bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    return freeze(teacher)


def context(teacher, weights, batch_size=4):
    return SynthContext(teacher=teacher, student=Tiny(), weights=weights, backward=lambda loss: loss.backward(),
                        optimizers=[], cost=CostMeter(), device=torch.device("cpu"), batch_size=batch_size)


def inversion(objective=None, teacher=None, **kwargs):
    synth = InversionSynthesizer(objective or ClassTargets(), save_transfer_set=False, **kwargs)
    teacher = teacher if teacher is not None else tiny_teacher()
    synth.setup((1, 6, 6), 3, (LOW.flatten(), HIGH.flatten()), teacher)
    return synth, teacher


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_bn_loss_matches_a_hand_computation():
    teacher = tiny_teacher()
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with BNStatHooks(teacher) as bn:
        teacher(x)
        loss = terms.bn(bn.layer_losses())
    a = teacher.conv(x)  # the BN input
    expected = 0.0
    for c, (rm, rv) in enumerate([(0.5, 2.0), (-0.25, 0.5)]):
        values = a[:, c].flatten().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        expected_mean_sq, expected_var_sq = (mean - rm) ** 2, (var - rv) ** 2
        expected = expected + torch.tensor([expected_mean_sq, expected_var_sq])
    hand = expected[0].sqrt() + expected[1].sqrt()  # ||mu - rm||_2 + ||var - rv||_2 over channels
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


class TinyWithBN1d(Tiny):
    """Tiny plus a BatchNorm1d on the pooled features, like a classifier head with BN."""

    def __init__(self):
        super().__init__()
        self.fc_bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.classifier(self.fc_bn(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


def test_bn_loss_covers_batchnorm1d_layers_too():
    torch.manual_seed(0)
    teacher = TinyWithBN1d()
    teacher.fc_bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    teacher.fc_bn.running_var.copy_(torch.tensor([0.5, 3.0]))
    teacher = freeze(teacher)
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with BNStatHooks(teacher) as bn:
        teacher(x)
        loss = terms.bn(bn.layer_losses())
        assert [tuple(i.shape) for i in bn.inputs] == [(5, 2, 6, 6), (5, 2)]
    pooled = torch.relu(teacher.bn(teacher.conv(x))).mean(dim=(2, 3))  # the BN1d input, (5, 2)
    mean = pooled.mean(0)
    var = ((pooled - mean) ** 2).mean(0)
    fc_term = (mean - torch.tensor([1.0, -1.0])).norm() + (var - torch.tensor([0.5, 3.0])).norm()
    a = teacher.conv(x)
    conv_term = (a.mean(dim=(0, 2, 3)) - teacher.bn.running_mean).norm() + (
        a.var(dim=(0, 2, 3), unbiased=False) - teacher.bn.running_var).norm()
    assert loss.item() == pytest.approx((conv_term + fc_term).item(), rel=1e-5)


def test_inversion_lowers_the_loss_clips_and_leaves_no_hooks():
    synth, teacher = inversion(iterations=30, lr=0.1)
    ctx = context(teacher, {"target_ce": 1.0, "bn": 1.0, "tv_l2": 0.01})
    before = hook_count(teacher)
    with torch.no_grad():
        start_loss = nn.functional.cross_entropy(teacher(synth.start(4, "cpu")), torch.arange(4) % 3)
    terms = synth.synthesize(ctx)
    assert set(terms) == {"target_ce", "bn", "tv_l2"}
    assert terms["target_ce"] < start_loss
    images = synth.pool.newest(4)
    assert images.shape == (4, 1, 6, 6) and images.min() >= -1.0 and images.max() <= 2.0
    assert hook_count(teacher) == before
    assert ctx.cost.images.item() == 4 and ctx.cost.teacher_forwards.item() == 30
    assert all(p.grad is None for p in ctx.student.parameters())


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_no_hook_or_memory_growth_over_50_batches():
    synth, teacher = inversion(iterations=2)
    ctx = context(teacher, {"target_ce": 1.0, "bn": 1.0, "comp": 0.5})
    before = hook_count(teacher)
    counts = []
    for i in range(50):
        synth.make(ctx)
        if i in (9, 49):
            counts.append(live_tensors())
        assert hook_count(teacher) == before
    assert counts[1] <= counts[0]


def test_zskd_soft_targets_are_dirichlet_draws_stored_with_the_images():
    synth, teacher = inversion(DirichletTargets(betas=(1.0, 0.1)), iterations=2)
    sim = synth.objective.similarity
    assert torch.allclose(sim.diagonal(), torch.ones(3)) and sim.min(1).values.eq(0).all()
    synth.synthesize(context(teacher, {"match": 1.0}, batch_size=8))
    images, soft = synth.pool.sample(8, torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 6, 6) and soft.shape == (8, 3)
    assert torch.allclose(soft.sum(1), torch.ones(8), atol=1e-5)
    batch = synth.batch(8, context(teacher, {}))
    assert batch.soft_targets is not None and batch.images.shape == (8, 1, 6, 6)


def test_balanced_pick_takes_classes_in_turn_and_fills_in_for_a_rare_one():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 20)
    picked = balanced_pick(labels, 30, 3, torch.Generator().manual_seed(0))
    assert len(set(picked.tolist())) == 30  # no row twice
    counts = torch.bincount(labels[picked], minlength=3).tolist()
    assert counts[1] == 3 and sorted(counts) == [3, 13, 14]  # class 1 gives all it has


def test_wang2021_oversampling_balances_the_soft_targets_classes():
    teacher = tiny_teacher()
    with torch.no_grad():  # three directions 120 degrees apart: every class can be the argmax
        angles = torch.tensor([0.0, 2.0944, 4.1888])
        teacher.classifier.weight.copy_(torch.stack([angles.cos(), angles.sin()], 1))
        teacher.classifier.bias.zero_()
    objective = inversion(FeatureGaussian(oversample=16), teacher)[0].objective
    with torch.no_grad():
        objective.log_d.copy_(torch.tensor([2.0, -2.0, -2.0]))  # scales that favour class 0
    ctx = context(teacher, {"match": 1.0}, batch_size=30)
    balanced = torch.bincount(objective.goal(30, ctx).argmax(1), minlength=3)
    objective.oversample = 1
    skewed = torch.bincount(objective.goal(30, ctx).argmax(1), minlength=3)
    assert balanced.tolist() == [10, 10, 10] and skewed.max() > 10


# --- transfer sets on disk -------------------------------------------------------------------
def write_batches(writer, batches):
    for images, soft in batches:
        writer.write(images, soft, LOW, HIGH, {"cost/images": 0.0})


def random_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return LOW + torch.rand(n, 1, 4, 4, generator=g) * (HIGH - LOW), torch.softmax(torch.randn(n, 3, generator=g), 1)


def test_transfer_set_resumes_after_an_interruption_without_loss_or_overwrite(tmp_path):
    info = {"teacher_sha256": "aaa", "teacher": "t"}
    folder = tmp_path / "transfer_set"
    batches = [random_batch(5, i) for i in range(4)]
    write_batches(TransferSetWriter(folder, info), batches[:2])
    # interrupted right after a shard was written, before the manifest caught up
    save_torch(folder / "shard_00002.pt", {"images": batches[2][0], "soft_targets": batches[2][1]})
    (folder / "shard_00003.pt.tmp").write_bytes(b"half a file")
    before = {p.name: p.read_bytes() for p in folder.glob("shard_*.pt")}
    write_batches(TransferSetWriter(folder, info), batches[3:])  # the resumed run
    assert sorted(p.name for p in folder.glob("shard_*.pt")) == [f"shard_{i:05d}.pt" for i in range(4)]
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["images"] == 20 and len(manifest["shards"]) == 4
    images, soft, _ = load_transfer_set(folder, "aaa")
    assert torch.equal(images, torch.cat([b[0] for b in batches]))  # the pool's floats, bit for bit
    assert torch.equal(soft, torch.cat([b[1] for b in batches]))
    newest, newest_soft, _ = load_transfer_set(folder, "aaa", newest=7)
    assert torch.equal(newest, images[-7:]) and torch.equal(newest_soft, soft[-7:])


def test_a_format_1_set_of_uint8_pixels_still_loads(tmp_path):
    write_batches(TransferSetWriter(tmp_path, {"teacher_sha256": "aaa", "teacher": "t"}), [random_batch(2, 0)])
    pixels = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 4, 4)
    save_torch(tmp_path / "shard_00001.pt", {"images": pixels, "soft_targets": torch.zeros(4, 3)})
    images, _, _ = load_transfer_set(tmp_path, "aaa")
    assert images.dtype == torch.float32 and images.shape == (6, 1, 4, 4)
    assert torch.allclose(images[2:, 0, 0, 0], torch.tensor([-1.0, 2.0, -0.4, 0.2]))  # LOW + p / 255 * 3


def test_manifest_rejects_a_set_made_by_another_teacher(tmp_path):
    write_batches(TransferSetWriter(tmp_path, {"teacher_sha256": "aaa", "teacher": "t"}), [random_batch(2, 0)])
    with pytest.raises(ConfigError, match="transfer_set=.*teacher"):
        load_transfer_set(tmp_path, "bbb")
    with pytest.raises(ConfigError, match="another teacher"):
        TransferSetWriter(tmp_path, {"teacher_sha256": "bbb"})
    with pytest.raises(ConfigError, match="manifest"):
        load_transfer_set(tmp_path / "nothing", "aaa")


TINY = ["method.synthesis.batch_size=16", "method.synthesizer.iterations=2", "method.synthesis.student_steps=1"]


@pytest.mark.parametrize("method", ["deepinversion", "adi", "zskd", "wang2021", "lopes"])
def test_inversion_method_runs_and_writes_a_transfer_set(compose_cfg, method):
    cfg = compose_cfg(f"method={method}", *TINY)
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["cost/images"] == 32
    manifest = json.loads((Path(cfg.paths.output_dir) / "transfer_set" / "manifest.json").read_text())
    assert manifest["images"] == 32 and manifest["method"]["name"] == method
    assert manifest["teacher_sha256"] == zoo_entry(cfg.teacher.zoo).sha256
    assert manifest["soft_targets"] == (method in ("zskd", "wang2021"))


def test_kd_transfer_distils_from_a_saved_set(compose_cfg, tmp_path):
    folder = tmp_path / "saved"
    sha = zoo_entry("lenet5_bn_fmnist").sha256
    low, high = torch.tensor([-0.81]).view(1, 1, 1, 1), torch.tensor([2.02]).view(1, 1, 1, 1)
    writer = TransferSetWriter(folder, {"teacher_sha256": sha, "teacher": "lenet5_bn_fmnist"})
    writer.write(low + torch.rand(24, 1, 32, 32) * (high - low), None, low, high, {})
    cfg = compose_cfg("method=kd_transfer", f"transfer_set={folder}", "method.synthesis.batch_size=8")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["cost/images"] == 0
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"]["synthesizer._extra_state"]["pool"] is None  # the set is on disk already
    with pytest.raises(ConfigError, match="transfer_set"):
        run(compose_cfg("method=kd_transfer", f"transfer_set={folder}", "teacher=lenet5_fmnist",
                        f"paths.output_dir={tmp_path / 'other'}"))


def test_lopes_metadata_is_per_class_mean_and_std_of_each_layer():
    from dfkd_lab.synthesis.lopes import KEY, record_activation_stats

    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, -1.0], [7.0, 1.0]])
    stats = record_activation_stats(model, x, torch.tensor([0, 0, 1, 1]), 2, batch_size=3)
    assert stats["class_counts"] == [2, 2]
    assert stats["layers"]["0"]["mean"] == [[2.0, 2.0], [6.0, 0.0]]
    assert stats["layers"]["0"]["std"] == [[1.0, 0.0], [1.0, 1.0]]
    for name in ("lenet5_fmnist", "lenet5_bn_fmnist", "lenet5_bn_fc_fmnist"):  # shipped with the teachers
        assert set(zoo_entry(name).metadata[KEY]["layers"]) >= {"fc1", "fc2", "classifier"}
