"""What a finished run delivers: its student, which loads again with the accuracy the run reported."""

import json
from pathlib import Path

import pytest
import torch

from dfkd_lab.build import build_data, build_module, build_student, build_teacher
from dfkd_lab.export import export_student, load_network
from dfkd_lab.quant import to_int8
from dfkd_lab.train import run
from dfkd_lab.zoo import QUANTISED, TeacherError, sha256


def accuracy(model, data) -> float:
    """Top-1 on the first test batch: the FAST runs test on that batch only."""
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_a_finished_run_exports_its_student_which_loads_with_the_reported_accuracy(compose_cfg):
    cfg = compose_cfg("method=kd", "trainer.limit_train_batches=5")
    metrics = run(cfg)
    path = Path(metrics["export/student"])
    assert path.name == "lenet5_half_fashion_mnist_kd.pt" and path.parent == Path(cfg.paths.output_dir)
    model, entry = load_network(path)
    data = build_data(cfg)
    data.setup("test")
    assert (entry.arch, entry.dataset, entry.mean, entry.std) == ("lenet5_half", "fashion_mnist", list(data.mean),
                                                                  list(data.std))
    assert entry.sha256 == sha256(path) and entry.command.startswith("dfkd-train")
    assert not model.training
    assert accuracy(model, data) == pytest.approx(metrics["test/acc"]) == pytest.approx(entry.test_acc, abs=1e-4)
    assert json.loads((path.parent / "metrics.json").read_text())["export/student"] == str(path)


def test_an_exported_student_is_a_teacher_for_the_next_run(compose_cfg, tmp_path):
    first = Path(run(compose_cfg("method=kd"))["export/student"])
    cfg = compose_cfg("method=kd", f"teacher.ckpt={first}", "student=lenet5_half")
    data = build_data(cfg)
    data.setup("test")
    teacher = build_teacher(cfg, data)  # the arch and normalisation come from the entry beside it
    assert accuracy(teacher, data) == pytest.approx(accuracy(load_network(first)[0], data))


def test_a_quantised_student_is_exported_as_int8_torchscript_that_computes_what_was_tested(compose_cfg):
    cfg = compose_cfg("method=dfq", "method.synthesis.steps_per_epoch=3")
    data = build_data(cfg)
    data.setup("fit")
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    module.student(torch.randn(64, 1, 32, 32))  # the observers see a range, as after training
    path = export_student(cfg, data, module, cfg.paths.output_dir, {"test/acc_int8": 0.5})
    scripted = torch.jit.load(str(path.path()))  # plain torch: no dfkd-lab class is needed to run it
    x = torch.randn(16, 1, 32, 32)
    assert torch.equal(scripted(x), to_int8(module.student)(x))
    assert "quantize_per_tensor" in scripted.code
    _, entry = load_network(path.path())
    assert entry.metadata == {QUANTISED: 8} and entry.test_acc == 0.5 and entry.name.endswith("_dfq_int8")


def test_a_dfq_run_exports_its_int8_model_with_the_int8_accuracy(compose_cfg):
    cfg = compose_cfg("method=dfq", "method.synthesis.steps_per_epoch=3")
    metrics = run(cfg)
    path = Path(metrics["export/student"])
    assert path.name == "lenet5_half_fashion_mnist_dfq_int8.pt"
    data = build_data(cfg)
    data.setup("test")
    model, entry = load_network(path)
    assert accuracy(model, data) == pytest.approx(metrics["test/acc_int8"])
    assert entry.test_acc == pytest.approx(metrics["test/acc_int8"], abs=1e-4)


def test_a_quantised_student_is_refused_as_a_teacher_naming_what_it_is(compose_cfg):
    path = run(compose_cfg("method=dfq", "method.synthesis.steps_per_epoch=2"))["export/student"]
    cfg = compose_cfg("method=kd", f"teacher.ckpt={path}")
    with pytest.raises(TeacherError, match=r"teacher.ckpt: .*_int8.pt is a student quantised to 8 bits .*quant_bits=0"):
        build_teacher(cfg, build_data(cfg))


def test_a_float_dfq_student_is_exported_as_weights(compose_cfg):
    metrics = run(compose_cfg("method=dfq", "method.dfq.quant_bits=0", "method.synthesis.steps_per_epoch=2"))
    assert Path(metrics["export/student"]).name == "lenet5_half_fashion_mnist_dfq.pt"
    assert QUANTISED not in load_network(metrics["export/student"])[1].metadata


def test_a_weights_file_without_its_entry_is_refused_by_the_loader(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({}, path)
    with pytest.raises(TeacherError, match=r"no w.json beside it"):
        load_network(path)
