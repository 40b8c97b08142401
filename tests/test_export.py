"""What a finished run delivers: its student, which loads again with the accuracy the run reported."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from dfkd_lab.build import build_data, build_module, build_student, build_teacher
from dfkd_lab.export import export_student, load_network, prepare_inputs
from dfkd_lab.methods import dfq
from dfkd_lab.quant import to_int8
from dfkd_lab.train import run, summary
from dfkd_lab.zoo import QUANTISED, TeacherError, sha256


def accuracy(model, data) -> float:
    """Top-1 on the first test batch: the FAST runs test on that batch only."""
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def exported(cfg) -> Path:
    return Path(cfg.paths.output_dir) / run(cfg)["export/student"]


def test_a_finished_run_exports_its_student_which_loads_with_the_reported_accuracy(compose_cfg):
    cfg = compose_cfg("method=kd", "trainer.limit_train_batches=5")
    metrics = run(cfg)
    path = Path(cfg.paths.output_dir) / metrics["export/student"]  # the name: the run dir may move
    assert metrics["export/student"] == "lenet5_half_fashion_mnist_kd.pt"
    model, entry = load_network(path)
    data = build_data(cfg)
    data.setup("test")
    assert (entry.arch, entry.dataset, entry.mean, entry.std) == ("lenet5_half", "fashion_mnist", list(data.mean),
                                                                  list(data.std))
    assert entry.sha256 == sha256(path) and entry.command.startswith("dfkd-train")
    assert not model.training
    assert accuracy(model, data) == pytest.approx(metrics["test/acc"]) == pytest.approx(entry.test_acc, abs=1e-4)
    assert json.loads((path.parent / "metrics.json").read_text())["export/student"] == path.name


def test_an_exported_student_is_a_teacher_for_the_next_run(compose_cfg, tmp_path):
    first = exported(compose_cfg("method=kd"))
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


def test_a_dfq_run_converts_once_and_exports_the_int8_model_it_tested_which_is_no_teacher(compose_cfg, monkeypatch,
                                                                                           tmp_path, capsys):
    conversions = []
    monkeypatch.setattr(dfq, "to_int8", lambda model: conversions.append(model) or to_int8(model))
    cfg = compose_cfg("method=dfq", "method.dfq.quant_bits=4", "method.synthesis.steps_per_epoch=3")
    metrics = run(cfg)
    assert len(conversions) == 1  # the test's int8 model is the one exported
    assert "quantisation-aware training starts" not in capsys.readouterr().err  # its one epoch trained quantised
    assert metrics["quant/bits"] == 4 and 0 < metrics["quant/int8_bytes"] < metrics["quant/float_bytes"]
    path = Path(cfg.paths.output_dir) / metrics["export/student"]
    assert path.name == "lenet5_half_fashion_mnist_dfq_int8.pt"
    data = build_data(cfg)
    data.setup("test")
    model, entry = load_network(path)
    assert accuracy(model, data) == pytest.approx(metrics["test/acc_int8"])
    assert entry.test_acc == pytest.approx(metrics["test/acc_int8"], abs=1e-4) and entry.metadata == {QUANTISED: 4}
    teacher_cfg = compose_cfg("method=kd", f"teacher.ckpt={path}")
    with pytest.raises(TeacherError, match=r"teacher.ckpt: .*_int8.pt is a student quantised to 4 bits .*quant_bits=0"):
        build_teacher(teacher_cfg, data)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(TeacherError, match=rf"^{re.escape(str(path))} has sha256 \w+, expected \w+ .*export it again"):
        load_network(path)
    with pytest.raises(TeacherError, match=r"nosuch.pt: no such file"):
        load_network(tmp_path / "nosuch.pt")


def test_a_dfq_run_that_stops_before_quantisation_aware_training_says_so(compose_cfg, capsys):
    cfg = compose_cfg("method=dfq", "trainer.max_epochs=2", "trainer.max_steps=1", "method.synthesis.steps_per_epoch=2")
    run(cfg)
    warning = "before epoch 2 of 2, where quantisation-aware training starts (method.dfq.quant_from=0.5)"
    assert warning in capsys.readouterr().err
    assert warning in (Path(cfg.paths.output_dir) / "train.log").read_text()


def test_a_float_dfq_student_is_exported_as_weights(compose_cfg):
    path = exported(compose_cfg("method=dfq", "method.dfq.quant_bits=0", "method.synthesis.steps_per_epoch=2"))
    assert path.name == "lenet5_half_fashion_mnist_dfq.pt"
    assert QUANTISED not in load_network(path)[1].metadata


def test_a_weights_file_without_its_entry_is_refused_by_the_loader(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({}, path)
    with pytest.raises(TeacherError, match=r"no w.json beside it"):
        load_network(path)
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(TeacherError, match=rf"^{tmp_path}/w.pt: .*w.json beside it is not a zoo entry"):
        load_network(path)  # named as given, not as a config key


def test_prepare_inputs_makes_what_the_run_tested_on_from_raw_images(compose_cfg):
    """Fashion-MNIST's 28x28 images are zero-padded to 32 before normalising: a user who resizes
    them instead loses points, so the entry and prepare_inputs carry what the run did."""
    cfg = compose_cfg("method=kd")
    path = exported(cfg)
    data = build_data(cfg)
    raw = data._raw("test")[0][:64]
    assert raw.shape[-1] == 28
    _, entry = load_network(path.with_suffix(".json"))  # the entry's path works as well as the weights'
    assert torch.equal(prepare_inputs(raw.float() / 255, entry), data.split("test").tensors[0][:64])


def test_a_network_of_ones_own_that_cannot_be_imported_is_named_with_the_fix(compose_cfg):
    path = exported(compose_cfg("method=kd"))
    entry = json.loads(path.with_suffix(".json").read_text())
    entry["model"] = {"_target_": "nosuch_module.Net", "num_classes": 10}
    path.with_suffix(".json").write_text(json.dumps(entry))
    with pytest.raises(TeacherError, match=r"nosuch_module.Net.*no module named 'nosuch_module'.*PYTHONPATH"):
        load_network(path)
    cfg = compose_cfg("method=kd", f"teacher.ckpt={path}")
    with pytest.raises(TeacherError, match=r"^teacher.ckpt: .*nosuch_module"):
        build_teacher(cfg, build_data(cfg))


def test_a_renamed_zoo_entry_is_refused_naming_the_fields_to_edit(compose_cfg, tmp_path):
    path = exported(compose_cfg("method=kd"))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(path, zoo / "mine.pt")
    shutil.copy(path.with_suffix(".json"), zoo / "mine.json")
    cfg = compose_cfg("method=kd", "teacher.zoo=mine", f"paths.zoo_dir={zoo}")
    with pytest.raises(TeacherError, match=r"teacher.zoo=mine: .*mine.json says \"name\": "
                                           r"'lenet5_half_fashion_mnist_kd'.*set its \"name\" to 'mine'.*\"file\""):
        build_teacher(cfg, build_data(cfg))
    entry = json.loads((zoo / "mine.json").read_text())
    (zoo / "mine.json").write_text(json.dumps({**entry, "name": "mine", "file": "mine.pt"}))
    data = build_data(cfg)
    data.setup("test")
    assert accuracy(build_teacher(cfg, data), data) == pytest.approx(accuracy(load_network(path)[0], data))


def test_the_summary_line_names_the_int8_models_accuracy(compose_cfg):
    cfg = compose_cfg("method=dfq")
    line = summary(cfg, {"test/acc": 0.5, "test/acc_int8": 0.25, "time/total_s": 3.0}, Path("run"))
    assert "test acc 50.00% | int8 25.00% |" in line


def test_the_recorded_command_pastes_back_into_a_shell(compose_cfg):
    metrics = run(compose_cfg("method=kd", "tags=[a b,c]"))
    assert shlex.split(metrics["run/command"])[-1] == "tags=[a b,c]"
