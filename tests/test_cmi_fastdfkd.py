"""CMI and FastDFKD: their losses against hand computations, a few steps of each, and
resuming an interrupted run to exactly the metrics of an uninterrupted one."""

import math

import pytest
import torch

from dfkd_lab.losses.adversarial import agreement_masked_kl
from dfkd_lab.losses.contrastive import info_nce
from dfkd_lab.synthesis.views import global_view


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])  # key 2 is a bank negative
    t = 0.5
    # query 0: similarities 1, 0.6, -1 -> positive is key 0; query 1: 0, 0.8, 0 -> positive key 1
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2) + math.exp(-2.0)))
    l1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6) + math.exp(0.0)))
    assert info_nce(q, k, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_needs_a_key_per_query():
    with pytest.raises(ValueError, match="key per query"):
        info_nce(torch.ones(3, 2), torch.ones(2, 2), 0.2)


def test_agreement_masked_kl_ignores_disagreeing_samples():
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # sample 1 disagrees: masked out
    p = torch.softmax(teacher[0], 0)
    q = torch.softmax(student[0], 0)
    kl0 = (p * (p.log() - q.log())).sum().item()
    assert agreement_masked_kl(student, teacher).item() == pytest.approx(kl0 / 2, rel=1e-6)


@pytest.mark.parametrize("flip", [True, False])
def test_global_view_mirrors_some_images_and_passes_gradients(flip):
    x = torch.randn(64, 1, 8, 8, requires_grad=True)
    view = global_view(x, 0, flip, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(v, i.flip(2)) for v, i in zip(view, x.detach())])
    unchanged = torch.tensor([torch.equal(v, i) for v, i in zip(view, x.detach())])
    assert torch.all(mirrored | unchanged)
    assert mirrored.any() == flip and unchanged.any()
    (view * torch.arange(64.0).view(64, 1, 1, 1)).sum().backward()
    assert torch.all(x.grad.sum(dim=(1, 2, 3)) == 64 * torch.arange(64.0))


def _contrastive(init):
    from dfkd_lab.models import build_model
    from dfkd_lab.synthesis.contrastive import ContrastiveSynthesizer

    synthesizer = ContrastiveSynthesizer(nz=8, ngf=32, init=init)
    teacher = build_model("lenet5_bn", num_classes=10, in_channels=1)
    synthesizer.setup((1, 28, 28), 10, (torch.tensor([-1.0]), torch.tensor([1.0])), teacher)
    synthesizer.seed(0)
    return synthesizer


def _assert_initialised(generator, init):
    std = generator.body[2].weight.std().item()
    if init == "default":  # PyTorch's Kaiming-uniform: std 1/sqrt(3 fan_in), ~0.024 here
        assert std == pytest.approx(1 / math.sqrt(3 * 64 * 9), rel=0.1)
        return
    assert std == pytest.approx(0.02, rel=0.1)
    assert torch.all(generator.project.bias == 0)
    bn_scale = generator.body[3].weight
    assert (bn_scale - 1).abs().max() < 0.1 and not torch.all(bn_scale == 1)


@pytest.mark.parametrize("init", ["dcgan", "default"])
def test_a_round_starts_from_the_chosen_initialisation(init):
    synthesizer = _contrastive(init)
    _assert_initialised(synthesizer.generator, init)  # as built
    with torch.no_grad():
        for p in synthesizer.generator.parameters():
            p.fill_(3.0)
    synthesizer.reinitialise(synthesizer.generator)  # as every round starts
    _assert_initialised(synthesizer.generator, init)


def test_an_unknown_generator_initialisation_names_the_key():
    from dfkd_lab.synthesis.contrastive import ContrastiveSynthesizer

    with pytest.raises(ValueError, match="synthesizer.init"):
        ContrastiveSynthesizer(init="xavier")


# --- running and resuming -------------------------------------------------------------------
import pytorch_lightning as pl

from conftest import fit_two_epochs

TINY = {
    "cmi": ["method=cmi", "method.synthesizer.iterations=2", "method.synthesizer.negatives=8",
            "method.synthesizer.bank_size=40"],
    "fastdfkd": ["method=fastdfkd", "method.synthesis.warmup_epochs=1", "method.synthesizer.meta=reptile"],
    "fastdfkd_maml": ["method=fastdfkd_5", "method.synthesis.warmup_epochs=0"],
}
SMALL = ["method.synthesis.steps_per_epoch=3", "method.synthesis.batch_size=16", "method.synthesis.student_steps=2",
         "method.synthesizer.ngf=4", "method.synthesizer.nz=8", "trainer.limit_train_batches=null"]



@pytest.mark.slow
@pytest.mark.parametrize("method", ["cmi", "fastdfkd", "fastdfkd_2", "fastdfkd_5", "fastdfkd_10"])
def test_method_runs_a_few_steps(compose_cfg, method):
    from dfkd_lab.train import run

    cfg = compose_cfg(f"method={method}", "method.synthesis.warmup_epochs=0", "method.synthesizer.iterations=2"
                      if method == "cmi" else "method.synthesizer.ngf=4", *SMALL[:3])
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["cost/images"] == 2 * 16  # FAST: two training steps, one batch each
    assert metrics["cost/teacher_forwards"] > 0


@pytest.mark.parametrize("kwargs, key", [
    ({"meta": "sgd"}, "synthesizer.meta"),
    ({"g_steps": 0}, "synthesizer.g_steps"),
    ({"bn_momentum": 1.0}, "synthesizer.bn_momentum"),
])
def test_bad_fastdfkd_settings_name_the_key(kwargs, key):
    from dfkd_lab.synthesis.meta import MetaSynthesizer

    with pytest.raises(ValueError, match=key):
        MetaSynthesizer(**kwargs)

class StopAfterEpochs(pl.Callback):
    """Stop the fit after ``epochs`` epochs, as an interruption would (the schedule is unchanged)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(cfg, ckpt_dir, stop_after=None, ckpt_path=None):
    callbacks = [StopAfterEpochs(stop_after)] if stop_after else []
    module, trainer = fit_two_epochs(cfg, ckpt_dir, callbacks, ckpt_path)
    return module, float(trainer.callback_metrics["val/acc"])


def whole_and_resumed(cfg, tmp_path):
    """Fits ``cfg`` uninterrupted and stopped after one epoch then resumed; asserts both end
    with the same accuracy, student weights and synthesizer tensors, and returns both modules."""
    whole, whole_acc = fit(cfg, tmp_path / "whole")
    fit(cfg, tmp_path / "cut", stop_after=1)
    resumed, resumed_acc = fit(cfg, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert resumed_acc == whole_acc
    for key, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    a, b = whole.synthesizer, resumed.synthesizer
    assert torch.equal(a.rng.get_state(), b.rng.get_state())
    for key, value in a.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b.state_dict()[key]), key
    return whole, resumed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_interrupted_run_resumes_to_the_same_result(compose_cfg, tmp_path, name):
    cfg = compose_cfg(*TINY[name], *SMALL)
    whole, resumed = whole_and_resumed(cfg, tmp_path)
    assert whole.cost.images.item() == resumed.cost.images.item() == 2 * 3 * 16
    a, b = whole.synthesizer, resumed.synthesizer
    assert len(a.pool) == len(b.pool) == 2 * 3 * 16
    assert torch.equal(a.pool.sample(16, torch.Generator().manual_seed(0))[0],
                       b.pool.sample(16, torch.Generator().manual_seed(0))[0])
    if name == "cmi":
        assert len(a.bank) == len(b.bank) == 40
        assert torch.equal(a.bank.features, b.bank.features)
    else:
        assert a.bn_ema and all(torch.equal(a.bn_ema[i][0], b.bn_ema[i][0]) for i in a.bn_ema)


@pytest.mark.parametrize("budget,warned", [
    (["method.synthesis.warmup_epochs=50", "trainer.max_epochs=60", "trainer.max_time=00:00:00:02"], True),
    (["method.synthesis.warmup_epochs=1", "trainer.max_epochs=2"], False)])  # its second epoch trains
def test_a_run_stopped_within_the_warm_up_says_its_student_never_trained(compose_cfg, capsys, budget, warned):
    from dfkd_lab.train import run

    metrics = run(compose_cfg(*TINY["fastdfkd"], *SMALL, *budget))
    assert (metrics["cost/kd_s"] == 0) == warned
    assert ("the student never trained" in capsys.readouterr().err) == warned


def test_the_end_of_run_warnings_need_no_attached_trainer(compose_cfg):
    """After a spawned run (trainer=ddp_sim) the module in the launching process has no trainer."""
    from dfkd_lab.build import build_data, build_module, build_student, build_teacher

    cfg = compose_cfg(*TINY["fastdfkd"], *SMALL, "method.synthesis.warmup_epochs=50")
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    (warning,) = module.end_warnings(max_epochs=60)
    assert "the student never trained" in warning and "warmup_epochs=50" in warning
    assert module.end_warnings(max_epochs=50) == []  # the run was asked to end within the warm-up: warned before
