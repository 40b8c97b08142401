"""Start a narrower student from its teacher's weights (``student.init=teacher``).

The student must be the teacher's chain of conv and linear layers with the same kernels and
fewer channels, like LeNet-5-half from LeNet-5. Each layer keeps the teacher's output channels
of largest L1 norm and the input channels the layer before kept; a teacher BatchNorm that the
student lacks is folded into the conv or linear layer before it, one the student has is
sliced. The student then starts from features learned on real data instead of learning them
from synthetic images alone (LeNet-5-BN -> LeNet-5-half: 56.9% before any distillation; dafl
75.5% -> 83.5%).
"""

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

_BN = nn.modules.batchnorm._BatchNorm
# operations that join two branches (residual sums, concatenations)
_MERGES = {"add", "add_", "iadd", "sub", "mul", "matmul", "cat", "concat", "stack"}


class TeacherInitError(ValueError):
    """The student is not a narrower copy of the teacher's layer chain."""


def _chain(model: nn.Module) -> list[list[nn.Module]]:
    """The model's conv and linear layers in the order its forward calls them, each with the
    BatchNorm that follows it, if any. Channels can only be chosen layer by layer in a plain chain:
    a residual sum or a concatenation ties the choices of several layers together."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # tracing fails on data-dependent control flow
        raise TeacherInitError(f"cannot trace {type(model).__name__}'s forward ({err}); use student.init=random") from err
    modules = dict(model.named_modules())
    chain = []
    for node in graph.nodes:
        if node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) in _MERGES:
            raise TeacherInitError(
                f"{type(model).__name__} merges branches (at {node.name!r}): starting from the teacher "
                "needs a plain chain of layers such as LeNet-5; use student.init=random"
            )
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            chain.append([module])
        elif isinstance(module, _BN):
            if not chain or len(chain[-1]) > 1:
                raise TeacherInitError(f"{type(model).__name__}: BatchNorm {node.target!r} does not follow "
                                       "a conv or linear layer")
            chain[-1].append(module)
    return chain


def _folded(layer: nn.Module, bn: _BN | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and bias with ``bn`` (eval statistics) folded in (the conv formula holds
    for a linear layer's 2-d weight too)."""
    if bn is None:
        bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.weight.shape[0])
        return layer.weight, bias
    return fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def _check_pair(t: nn.Module, s: nn.Module, index: int):
    where = f"layer {index} ({type(s).__name__})"
    if type(t) is not type(s):
        raise TeacherInitError(f"{where}: the teacher has a {type(t).__name__} here")
    if isinstance(s, nn.Conv2d) and (
        s.kernel_size != t.kernel_size or s.stride != t.stride or s.groups != 1 or t.groups != 1
    ):
        raise TeacherInitError(f"{where}: kernel, stride or groups differ from the teacher's (or groups > 1)")
    if s.weight.shape[0] > t.weight.shape[0] or s.weight.shape[1] > t.weight.shape[1]:
        raise TeacherInitError(f"{where}: {tuple(s.weight.shape)} is wider than the teacher's {tuple(t.weight.shape)}")


def _input_index(kept: torch.Tensor, teacher_in: int, teacher_prev_out: int, student_in: int) -> torch.Tensor:
    """Teacher input columns for the kept channels of the layer before; a linear layer after a
    conv sees each channel as a run of ``teacher_in / teacher_prev_out`` flattened positions."""
    if teacher_in == teacher_prev_out:
        index = kept
    else:
        per_channel = teacher_in // teacher_prev_out
        index = (kept[:, None] * per_channel + torch.arange(per_channel)).flatten()
    if len(index) != student_in or teacher_in % teacher_prev_out:
        raise TeacherInitError(
            f"a layer with {student_in} inputs does not match the {len(kept)} channels kept before it"
        )
    return index


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> nn.Module:
    """Copy the teacher's largest-norm channels into ``student`` (in place) and return it."""
    t_chain, s_chain = _chain(teacher), _chain(student)
    if len(t_chain) != len(s_chain) or not s_chain:
        raise TeacherInitError(
            f"starting from the teacher needs the teacher's chain of conv/linear layers, narrower: the student "
            f"has {len(s_chain)} such layers, the teacher {len(t_chain)}; use student.init=random"
        )
    kept = None
    for index, (t_layers, s_layers) in enumerate(zip(t_chain, s_chain)):
        t, s = t_layers[0], s_layers[0]
        _check_pair(t, s, index)
        student_bn = s_layers[1] if len(s_layers) > 1 else None
        teacher_bn = t_layers[1] if len(t_layers) > 1 else None
        if student_bn is not None and teacher_bn is None:
            raise TeacherInitError(f"layer {index}: the student has a BatchNorm the teacher lacks")
        weight, bias = _folded(t, None if student_bn is not None else teacher_bn)
        if kept is not None:
            prev_out = t_chain[index - 1][0].weight.shape[0]
            weight = weight[:, _input_index(kept, t.weight.shape[1], prev_out, s.weight.shape[1])]
        elif s.weight.shape[1] != t.weight.shape[1]:
            raise TeacherInitError(f"the student takes {s.weight.shape[1]} input channels, the teacher {t.weight.shape[1]}")
        kept = weight.abs().flatten(1).sum(1).topk(s.weight.shape[0]).indices.sort().values
        s.weight.copy_(weight[kept])
        if s.bias is not None:
            s.bias.copy_(bias[kept])
        elif bias[kept].any():
            raise TeacherInitError(f"layer {index}: the student has no bias to take the teacher's (folded) bias")
        if student_bn is not None:
            if student_bn.affine != teacher_bn.affine:
                raise TeacherInitError(f"layer {index}: BatchNorm affine differs (student {student_bn.affine}, "
                                       f"teacher {teacher_bn.affine})")
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(student_bn, key) is not None:
                    getattr(student_bn, key).copy_(getattr(teacher_bn, key)[kept])
    return student
