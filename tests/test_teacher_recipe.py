"""The few-epoch teacher recipe: AirBench's whitening layer, the one-cycle schedule, Nesterov
SGD and label smoothing, each as a user sets it (experiment=teacher_cifar10_cpu_airbench)."""

import math

import pytest
import torch

from conftest import compose_config
from dfkd_lab.build import build_data, build_module, build_student
from dfkd_lab.data import sources
from dfkd_lab.losses.terms import ce
from dfkd_lab.models import build_model
from dfkd_lab.optim import build_optimizer, build_schedule, network_groups, one_cycle
from dfkd_lab.validate import problems


def test_ce_with_label_smoothing_against_hand_computed_value():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # probabilities 0.75, 0.25
    labels = torch.tensor([0])
    assert ce(logits, labels).item() == pytest.approx(-math.log(0.75))
    # targets 0.9 / 0.1 (0.2 spread over 2 classes)
    assert ce(logits, labels, label_smoothing=0.2).item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)))


def test_one_cycle_rises_to_the_peak_then_falls_to_its_end():
    assert one_cycle(0, 100) == pytest.approx(0.2)
    assert one_cycle(23, 100) == pytest.approx(1.0)
    assert one_cycle(23 + 77 / 2, 100) == pytest.approx((1 + 0.07) / 2)
    assert one_cycle(100, 100) == pytest.approx(0.07)
    assert one_cycle(10, 100) < one_cycle(20, 100) and one_cycle(50, 100) > one_cycle(90, 100)


def test_the_recipe_builds_nesterov_sgd_on_a_one_cycle_schedule():
    cfg = compose_config(["experiment=teacher_cifar10_cpu_airbench"])
    assert cfg.teacher.arch == "airbench" and cfg.loss.label_smoothing == 0.2 and problems(cfg) == []
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([weight], cfg.method)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.85
    schedule = build_schedule(opt, cfg.method, 100)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.2 * cfg.method.lr) and max(rates) == pytest.approx(cfg.method.lr)
    assert rates.index(max(rates)) == 23


@pytest.mark.parametrize("override, message", [
    ("method.schedule=cosin", "method.schedule=cosin: choose one of cosine, constant, one_cycle"),
    ("method.optimizer=adamw", "method.optimizer=adamw: choose one of sgd, adam"),
    ("loss.label_smoothing=1.0", "loss.label_smoothing=1.0 must be in [0, 1)"),
])
def test_recipe_typos_are_named_before_the_run(override, message):
    assert message in problems(compose_config(["method=teacher", override]))


def test_the_whitening_layer_whitens_the_images_it_was_fitted_to():
    net = build_model("airbench", 10, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    x = x + torch.roll(x, 1, dims=3)  # neighbouring pixels correlated, as in photos
    net.fit_to_images(x)
    half = net.whiten.out_channels // 2  # the other half are the same filters negated
    out = (net.whiten(x) - net.whiten.bias.view(1, -1, 1, 1))[:, :half].permute(0, 2, 3, 1).reshape(-1, half)
    assert torch.allclose(out.T @ out / len(out), torch.eye(half), atol=0.01)
    assert not net.whiten.weight.requires_grad  # fixed once fitted
    assert net(x).shape == (64, 10)


def test_a_teacher_run_fits_the_whitening_to_its_training_images(tmp_path, monkeypatch):
    def fake_cifar(root, split, download=True):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10

    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)
    cfg = compose_config(["experiment=teacher_cifar10_cpu_airbench", "data.batch_size=8"], output_dir=tmp_path)
    data = build_data(cfg)
    student = build_student(cfg, data)
    before = student.whiten.weight.clone()
    module = build_module(cfg, student, None, data)  # method=teacher uses no teacher
    assert module.student_parameters()[0]["lr_scale"] == 64  # the network's own optimiser groups
    fitted = build_model("airbench", 10, 3)
    fitted.fit_to_images(data.split("train").tensors[0])
    assert not torch.equal(before, student.whiten.weight)
    assert torch.allclose(student.whiten.weight, fitted.whiten.weight, atol=1e-5)


def test_a_group_with_an_lr_scale_gets_that_multiple_and_the_same_decay_per_step():
    cfg = compose_config(["experiment=teacher_cifar10_cpu_airbench", "method.lr=0.5", "method.weight_decay=0.002"])
    fast, plain = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = build_optimizer([{"params": [fast], "lr_scale": 64}, {"params": [plain]}], cfg.method)
    assert [g["lr"] for g in opt.param_groups] == [32.0, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.002 / 64, 0.002])
    assert [g["lr"] * g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


def test_modules_trained_beside_a_network_join_its_plain_rate_group():
    extra = torch.nn.Linear(3, 2)  # as KD's projections or DFQ's peers
    plain = torch.nn.Linear(4, 3)
    (group,) = network_groups(plain, extra)  # a network without groups of its own keeps one
    assert [id(p) for p in group["params"]] == [id(p) for p in [*plain.parameters(), *extra.parameters()]]
    shifts, rest = network_groups(build_model("airbench", 10, 3), extra)
    assert shifts["lr_scale"] == 64 and not any(p is q for p in shifts["params"] for q in extra.parameters())
    assert "lr_scale" not in rest and [id(p) for p in rest["params"][-2:]] == [id(p) for p in extra.parameters()]


def test_airbench_trains_its_norm_shifts_faster_and_never_its_norm_scales():
    cfg = compose_config(["experiment=teacher_cifar10_cpu_airbench"])
    net = build_model("airbench", 10, 3)
    shifts, rest = net.parameter_groups()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert shifts["lr_scale"] == 64 and len(shifts["params"]) == len(norms) == 6
    assert all(not n.weight.requires_grad and torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)
    trained = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in (shifts, rest) for p in g["params"]} == trained  # every trained weight, once
    opt = build_optimizer(net.parameter_groups(), cfg.method)
    assert opt.param_groups[0]["lr"] == pytest.approx(64 * cfg.method.lr)
