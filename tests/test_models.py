"""The model registry, exact parameter counts of the papers' LeNets, and hook-based feature taps."""

import pytest
import torch

from dfkd_lab.models import build_model, model_names
from dfkd_lab.models.taps import FeatureTap, penultimate_tap, stage_tap

LENETS = ["lenet5", "lenet5_bn", "lenet5_half", "lenet5_half_bn"]
# (channels, spatial size) of each feature stage for a 32x32 input, and the pre-logit width
STAGES = {
    "lenet5": ([(6, 14), (16, 5)], 84),
    "lenet5_half": ([(3, 14), (8, 5)], 84),
    "resnet18": ([(64, 32), (128, 16), (256, 8), (512, 4)], 512),
    "vgg8": ([(64, 16), (128, 8), (256, 4), (512, 2), (512, 1)], 512),
    "wrn16_1": ([(16, 32), (32, 16), (64, 8)], 64),
    "wrn16_2": ([(32, 32), (64, 16), (128, 8)], 128),
}
BIG = {"resnet18", "resnet34", "vgg11", "wrn40_1", "wrn40_2"}  # a second or more each on 2 cores


def archs(names):
    return [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in sorted(names)]


def make(arch, num_classes=10):
    channels = 1 if arch in LENETS else 3
    return build_model(arch, num_classes=num_classes, in_channels=channels).eval(), channels


def test_registry_knows_every_family():
    assert set(LENETS) | {"resnet18", "resnet34", "vgg8", "vgg11", "wrn16_1", "wrn40_2"} <= set(model_names())


@pytest.mark.parametrize("arch", archs(model_names()))
def test_every_architecture_builds_and_predicts_num_classes(arch):
    model, channels = make(arch, num_classes=7)
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(KeyError, match="lenet5_half"):
        build_model("lenet6")


@pytest.mark.parametrize("arch,count", [("lenet5", 61_706), ("lenet5_half", 35_820)])
def test_lenet_parameter_counts_match_the_papers(arch, count):
    model, _ = make(arch)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("arch", archs(STAGES))
def test_stage_and_penultimate_taps_return_expected_shapes(arch):
    model, channels = make(arch)
    stages, width = STAGES[arch]
    with torch.no_grad(), stage_tap(model) as stage, penultimate_tap(model) as pre:
        model(torch.randn(3, channels, 32, 32))
        shapes = [tuple(f.shape) for f in stage.features]
        pre_shape = tuple(pre.features[0].shape)
    assert shapes == [(3, c, s, s) for c, s in stages]
    assert pre_shape == (3, width)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_taps_leave_no_hooks_behind_even_after_an_error():
    model, _ = make("lenet5")
    with stage_tap(model), penultimate_tap(model):
        assert hook_count(model) == 3
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError), stage_tap(model):
        model(torch.randn(1, 3, 32, 32))  # wrong channel count
    assert hook_count(model) == 0


def test_tap_on_a_missing_layer_names_it():
    model, _ = make("lenet5")
    with pytest.raises(KeyError, match="block9"):
        FeatureTap(model, ["block1", "block9"])
