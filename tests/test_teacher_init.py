"""student.init=teacher: a narrower student started from the teacher's largest-norm channels."""

import pytest
import torch
from torch import nn

from dfkd_lab.build import build_data, build_student, build_teacher
from dfkd_lab.config import ConfigError
from dfkd_lab.models import build_model
from dfkd_lab.models.teacher_init import TeacherInitError, init_from_teacher
from dfkd_lab.synthesis.bn_hooks import bn_layers


def lenet(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=1).eval()
    for m in bn_layers(model):  # BN statistics away from the identity, so folding matters
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        nn.init.uniform_(m.weight, 0.5, 2)
        nn.init.uniform_(m.bias, -1, 1)
    return model


@pytest.mark.parametrize("teacher_arch,student_arch", [("lenet5_bn", "lenet5"), ("lenet5_bn", "lenet5_bn"),
                                                       ("lenet5", "lenet5"), ("lenet5_bn_fc", "lenet5")])
def test_a_student_as_wide_as_the_teacher_computes_the_teachers_function(teacher_arch, student_arch):
    teacher, student = lenet(teacher_arch), lenet(student_arch)
    init_from_teacher(student, teacher)
    x = torch.randn(8, 1, 32, 32)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)


def chain(width, bn_affine=None, bias=False):
    """conv [-> BatchNorm] -> ReLU -> flatten -> linear: a plain chain outside the zoo."""
    torch.manual_seed(1)
    layers = [nn.Conv2d(1, width, 3, bias=bias)]
    if bn_affine is not None:
        layers.append(nn.BatchNorm2d(width, affine=bn_affine))
        layers[-1].running_mean.uniform_(-1, 1)
        layers[-1].running_var.uniform_(0.5, 2)
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 3)).eval()


def test_a_bias_free_conv_takes_a_non_affine_batchnorm_folded():
    teacher = chain(4, bn_affine=False)
    student = init_from_teacher(chain(4, bias=True), teacher)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TeacherInitError, match="no bias"):
        init_from_teacher(chain(4), teacher)  # a bias-free student cannot hold the folded shift
    with pytest.raises(TeacherInitError, match="affine differs"):
        init_from_teacher(chain(2, bn_affine=True), teacher)


def test_the_channels_with_the_largest_norm_are_kept():
    """Half of each conv layer's channels are dead (zero weights and bias): the half-width student
    keeps exactly the live ones, so it computes the teacher's function."""
    teacher = lenet("lenet5")
    with torch.no_grad():
        for conv, dead in ((teacher.block1[0], [0, 2, 4]), (teacher.block2[0], [1, 4, 5, 6, 9, 10, 12, 15])):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
    student = init_from_teacher(lenet("lenet5_half"), teacher)
    assert torch.equal(student.block1[0].weight, teacher.block1[0].weight[[1, 3, 5]])
    live2 = [0, 2, 3, 7, 8, 11, 13, 14]
    assert torch.equal(student.block2[0].weight, teacher.block2[0].weight[live2][:, [1, 3, 5]])
    fc1 = teacher.fc1.weight.view(120, 16, 25)[:, live2].flatten(1)
    assert torch.equal(student.fc1.weight, fc1)
    x = torch.randn(8, 1, 32, 32)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("student_arch,teacher_arch,message", [
    ("wrn16_1", "wrn40_2", "plain chain"),  # residual sums tie the channel choices of many layers
    ("lenet5", "lenet5_half", "wider than the teacher"),
    ("lenet5_half_bn", "lenet5", "BatchNorm the teacher lacks"),
    ("vgg8", "lenet5", "layers"),
])
def test_a_student_that_is_not_a_narrower_copy_is_rejected(student_arch, teacher_arch, message):
    with pytest.raises(TeacherInitError, match=message):
        init_from_teacher(lenet(student_arch), lenet(teacher_arch))


def test_the_shipped_teacher_gives_a_student_that_already_classifies(compose_cfg):
    cfg = compose_cfg("method=dafl", "teacher=lenet5_bn_fmnist", "student.init=teacher")
    data = build_data(cfg)
    data.setup("test")
    student = build_student(cfg, data, build_teacher(cfg, data)).eval()
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        accuracy = (student(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.4  # measured 0.57 on the whole test split; a random student is near 0.1


@pytest.mark.parametrize("overrides,message", [
    (["student.init=techer"], "choose one of random, teacher"),
    (["method=scratch", "student.init=teacher"], "trains without a teacher"),
    (["student=wrn16_1", "student.init=teacher"], "plain chain"),
])
def test_a_wrong_student_init_fails_before_training_naming_the_key(compose_cfg, overrides, message):
    cfg = compose_cfg(*overrides)
    data = build_data(cfg)
    teacher = build_teacher(cfg, data) if cfg.method.uses_teacher else None
    with pytest.raises(ConfigError, match=f"student.init=.*{message}"):
        build_student(cfg, data, teacher)
