"""NAYER (noisy-layer synthesis) and kd_proxy (distillation from a proxy dataset): the noisy
layer and generator lifetimes, each class embedding, resuming, the proxy's conversion and the
refusal of the teacher's own data, the class-subset option, and every new preset."""

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import FAST, compose_config
from dfkd_lab.build import build_data, build_module, build_student, build_teacher
from dfkd_lab.config import ConfigError
from dfkd_lab.data import sources
from dfkd_lab.data.datamodule import keep_classes
from dfkd_lab.data.proxy import to_channels
from dfkd_lab.losses.registry import loss_term
from dfkd_lab.models import build_model
from dfkd_lab.synthesis.base import CostMeter, SynthContext
from dfkd_lab.synthesis.nayer import NoisyLayerSynthesizer, round_targets
from dfkd_lab.train import CONF_DIR, run
from dfkd_lab.zoo import sha256, zoo_entry
from test_experiments import shrink

WEIGHTS = {"target_ce": 0.5, "bn": 10.0, "adversarial_kl_agreement": 1.33}


def _nayer(**kwargs):
    teacher = build_model("lenet5_bn", num_classes=10, in_channels=1).eval()
    synth = NoisyLayerSynthesizer(nz=8, ngf=4, save_transfer_set=False, **kwargs)
    synth.setup((1, 32, 32), 10, (torch.tensor([-1.0]), torch.tensor([1.0])), teacher)
    synth.seed(0)
    return synth, teacher


def _context(teacher, epoch=0, batch_size=12):
    student = build_model("lenet5_half", num_classes=10, in_channels=1)
    return SynthContext(teacher=teacher, student=student, weights=WEIGHTS, backward=lambda loss: loss.backward(),
                        optimizers=[], cost=CostMeter(), device=torch.device("cpu"), batch_size=batch_size,
                        epoch=epoch)


# --- NAYER ----------------------------------------------------------------------------------
def test_the_noisy_layer_is_drawn_afresh_every_round_and_trained_within_it(monkeypatch):
    synth, teacher = _nayer(g_steps=3)
    drawn = []
    original = synth.new_noisy_layer

    def recording(copies, device):
        weight, bias = original(copies, device)
        drawn.append((weight, weight.detach().clone()))
        return weight, bias

    monkeypatch.setattr(synth, "new_noisy_layer", recording)
    ctx = _context(teacher)
    for _ in range(3):
        synth.synthesize(ctx)
    assert len(drawn) == 3  # one noisy layer per round
    assert all(w.shape == (2, 84, 8) for w, _ in drawn)  # 12 images of 10 classes: two copies of 84 -> 8
    firsts = [initial for _, initial in drawn]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
    assert all(not torch.equal(trained.detach(), initial) for trained, initial in drawn)  # optimised in its round
    assert len(synth.pool) == 36


def test_the_generator_is_reinitialised_every_g_life_epochs(monkeypatch):
    synth, teacher = _nayer(g_steps=1, g_life=2)
    renewed = []
    original = synth.reinitialise
    monkeypatch.setattr(synth, "reinitialise", lambda module: renewed.append(ctx.epoch) or original(module))
    for epoch in [0, 0, 1, 1, 2, 3, 4, 4, 5]:
        ctx = _context(teacher, epoch=epoch)
        synth.synthesize(ctx)
    assert renewed == [2, 4]
    assert synth.life == 2


@pytest.mark.parametrize("kind, dim", [("teacher_fc", 84), ("onehot", 10), ("learned", 16)])
def test_each_class_embedding_has_one_row_per_class(kind, dim):
    synth, teacher = _nayer(label_embedding=kind, learned_dim=16)
    assert synth.embedding.shape == (10, dim)
    assert isinstance(synth.embedding, torch.nn.Parameter) == (kind == "learned")
    if kind != "learned":
        assert torch.allclose(synth.embedding.norm(dim=1), torch.full((10,), math.sqrt(dim)))
    if kind == "teacher_fc":  # the directions of the teacher's classifier rows
        expected = F.normalize(teacher.classifier.weight.detach(), dim=1) * math.sqrt(dim)
        assert torch.allclose(synth.embedding, expected)
    images, _ = synth.make(_context(teacher))
    assert images.shape == (12, 1, 32, 32)


class StubTextEncoder:
    """Stands in for a real text encoder (no weights here): one fixed row per prompt."""

    def __init__(self):
        self.prompts = []

    def encode(self, texts):
        self.prompts += texts
        return torch.stack([torch.arange(6.0) + len(t) for t in texts])


def test_a_text_embedding_encodes_a_prompt_per_class_name():
    encoder = StubTextEncoder()
    names = [f"class{i}" for i in range(10)]
    synth, teacher = _nayer(label_embedding="text", text_encoder=encoder, class_names=names)
    assert encoder.prompts == [f"a image of class{i}" for i in range(10)]
    assert synth.embedding.shape == (10, 6)
    assert synth.make(_context(teacher))[0].shape == (12, 1, 32, 32)


@pytest.mark.parametrize("kwargs, key", [
    ({"label_embedding": "clip"}, "method.synthesizer.label_embedding"),
    ({"label_embedding": "text"}, "method.synthesizer.label_embedding=text needs method.synthesizer.text_encoder"),
    ({"g_life": 0}, "method.synthesizer.g_life"),
    ({"g_steps": 0}, "method.synthesizer.g_steps"),
    ({"learned_dim": 0}, "method.synthesizer.learned_dim"),
    ({"label_smoothing": 1.0}, "method.synthesizer.label_smoothing"),
])
def test_bad_nayer_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        NoisyLayerSynthesizer(**kwargs)


def test_round_targets_are_whole_copies_of_the_classes_then_distinct_ones():
    targets = round_targets(25, 10, torch.Generator().manual_seed(0))
    assert torch.equal(targets[:20], torch.arange(20) % 10)
    assert len(set(targets[20:].tolist())) == 5


def test_target_ce_with_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = torch.log_softmax(logits, 1)[0]
    eps = 0.3
    soft = torch.tensor([1 - eps + eps / 3, eps / 3, eps / 3])
    expected = -(soft * log_p).sum().item()
    assert loss_term("target_ce")(logits, torch.tensor([0]), label_smoothing=eps).item() == pytest.approx(expected)
    assert loss_term("target_ce")(logits, torch.tensor([0])).item() == pytest.approx(-log_p[0].item())


NAYER_TINY = ["method=nayer", "method.synthesis.warmup_epochs=0", "method.synthesis.steps_per_epoch=3", "method.synthesis.batch_size=16",
              "method.synthesis.student_steps=2", "method.synthesizer.ngf=4", "method.synthesizer.nz=8",
              "method.synthesizer.g_steps=2", "method.synthesizer.g_life=1", "trainer.limit_train_batches=null"]


@pytest.mark.slow
def test_interrupted_nayer_run_resumes_to_the_same_result(compose_cfg, tmp_path):
    """g_life=1: the generator is re-initialised at the start of the epoch after the cut."""
    from test_cmi_fastdfkd import whole_and_resumed

    whole, resumed = whole_and_resumed(compose_cfg(*NAYER_TINY), tmp_path)
    a, b = whole.synthesizer, resumed.synthesizer
    assert len(a.pool) == len(b.pool) == 2 * 3 * 16
    assert a.life == b.life == 1
    assert a.bn_ema and all(torch.equal(a.bn_ema[i][0], b.bn_ema[i][0]) for i in a.bn_ema)


# --- kd_proxy -------------------------------------------------------------------------------
def fake_cifar(root, split, download=True):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10


def test_kd_proxy_never_builds_the_teachers_training_split(tmp_path, monkeypatch):
    read = []
    real = sources.LOADERS["fashion_mnist"]
    monkeypatch.setitem(sources.LOADERS, "fashion_mnist",
                        lambda root, split, download=True: read.append(("fashion_mnist", split)) or real(root, split, download))
    monkeypatch.setitem(sources.LOADERS, "cifar10",
                        lambda root, split, download=True: read.append(("cifar10", split)) or fake_cifar(root, split))
    cfg = compose_config([*FAST, "method=kd_proxy", "method.synthesis.batch_size=8"], output_dir=tmp_path / "run")
    metrics = run(cfg)
    assert ("fashion_mnist", "train") not in read
    assert ("cifar10", "train") in read and ("fashion_mnist", "test") in read
    assert metrics["proxy/images"] == 40
    assert metrics["cost/teacher_forwards"] == 2  # one per student batch: the teacher labels the proxy


@pytest.mark.parametrize("overrides", [
    ["proxy.name=fashion_mnist"],  # the teacher's training split
    ["proxy.name=fashion_mnist", "proxy.split=test"],  # the images the run is scored on
    ["data=cifar10", "teacher=custom", "teacher.arch=wrn16_1", "student=wrn16_1", "data.classes=[0,1,2,3,4]",
     "data.num_classes=5", "proxy=cifar10_other5", "proxy.classes=[4,5,6]"],  # one class shared
])
def test_a_proxy_that_is_the_runs_own_data_is_refused_before_any_work(tmp_path, monkeypatch, overrides):
    monkeypatch.setitem(sources.LOADERS, "fashion_mnist", lambda *a, **k: pytest.fail("must not read images"))
    monkeypatch.setitem(sources.LOADERS, "cifar10", lambda *a, **k: pytest.fail("must not read images"))
    if "data=cifar10" in overrides:
        ckpt = tmp_path / "t.pt"
        torch.save(build_model("wrn16_1", num_classes=5, in_channels=3).state_dict(), ckpt)
        overrides = [*overrides, f"teacher.ckpt={ckpt}"]
    cfg = compose_config(["method=kd_proxy", *overrides], output_dir=tmp_path)
    data = build_data(cfg)
    with pytest.raises(ConfigError, match="a proxy must be other images"):
        build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)


def test_kd_proxy_without_a_proxy_says_what_to_give(tmp_path):
    cfg = compose_config(["method=kd_proxy"], output_dir=tmp_path)
    cfg.proxy = None
    data = build_data(cfg)
    with pytest.raises(ConfigError, match="needs proxy=NAME"):
        build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)


def test_a_proxy_seeds_a_pool_methods_pool_and_the_checkpoint_of_kd_proxy_leaves_it_out(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)

    def module_for(*overrides):
        cfg = compose_config(list(overrides), output_dir=tmp_path)
        data = build_data(cfg)
        return build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)

    hybrid = module_for("method=nayer", "proxy=cifar10_gray", "proxy.limit=25")
    assert len(hybrid.synthesizer.pool) == 25 and hybrid.proxy_record == {"proxy/images": 25.0}
    images, _ = hybrid.synthesizer.pool.sample(4, torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 32, 32)
    assert hybrid.synthesizer.seeded_images == 25 and "pool" in hybrid.synthesizer.get_extra_state()  # its index
    assert module_for("method=kd_proxy").synthesizer.get_extra_state()["pool"] is None  # rebuilt from the proxy
    with pytest.raises(ConfigError, match="keeps no image pool"):
        module_for("method=dafl", "proxy=cifar10_gray")



@pytest.mark.parametrize("method", ["zskd", "wang2021"])
def test_a_proxy_seeds_a_soft_target_pool_with_the_teachers_probabilities(tmp_path, monkeypatch, method):
    """ZSKD and Wang 2021 keep a soft target with every pooled image; proxy images get the
    teacher's, counted as teacher forwards, and the run then synthesises into the same pool."""
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)
    overrides = [*FAST, f"method={method}", "proxy=cifar10_gray", "proxy.limit=25", "method.synthesis.batch_size=10",
                 "method.synthesis.student_steps=1", "method.synthesizer.iterations=2"]
    cfg = compose_config(overrides, output_dir=tmp_path / "built")
    data = build_data(cfg)
    teacher = build_teacher(cfg, data)
    module = build_module(cfg, build_student(cfg, data), teacher, data)
    pool = module.synthesizer.pool.state_dict()
    with torch.no_grad():
        expected = F.softmax(teacher.eval()(pool["images"]), dim=1)
    assert torch.allclose(pool["soft_targets"], expected, atol=1e-5)
    assert module.cost.as_dict()["cost/teacher_forwards"] == 3  # 25 images in batches of 10
    metrics = run(compose_config(overrides, output_dir=tmp_path / "run"))
    assert metrics["proxy/images"] == 25 and metrics["cost/images"] == 20  # two synthesis steps of 10

def test_proxy_images_are_converted_to_the_datas_channels():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert to_channels(rgb, 1).item() == pytest.approx(0.299 + 0.5 * 0.587)
    gray = torch.full((1, 1, 2, 2), 0.25)
    assert torch.equal(to_channels(gray, 3), gray.repeat(1, 3, 1, 1))


def test_a_class_subset_keeps_its_images_relabelled_in_order():
    images = torch.arange(6).view(6, 1, 1, 1)
    labels = torch.tensor([0, 5, 3, 5, 9, 3])
    kept, relabelled = keep_classes(images, labels, [5, 3])
    assert kept.flatten().tolist() == [1, 2, 3, 5] and relabelled.tolist() == [0, 1, 0, 1]


def test_data_classes_must_agree_with_num_classes(tmp_path):
    cfg = compose_config(["data=cifar10", "data.classes=[0,1,2]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes=3"):
        build_data(cfg)


def test_a_five_class_split_reads_only_those_classes(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)
    cfg = compose_config(["data=cifar10", "data.classes=[0,1,2,3,4]", "data.num_classes=5"], output_dir=tmp_path)
    data = build_data(cfg)
    _, labels = data.split("test").tensors
    assert len(labels) == 20 and sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]


# --- every new preset composes and builds its module -----------------------------------------
PRESETS = [["method=nayer"], ["method=kd_proxy"], ["experiment=cifar10_nayer"],
           ["experiment=cifar10_nayer", "teacher=wrn40_2", "student=wrn16_1"],
           ["experiment=cifar10_cpu_nayer"], ["experiment=cifar10_5class_kd_proxy"],
           ["experiment=teacher_cifar10_5class"], ["method=nayer", "proxy=cifar10_gray", "proxy.limit=10"]]


@pytest.mark.parametrize("overrides", PRESETS, ids=" ".join)
def test_new_preset_composes_and_instantiates_its_module(tmp_path, monkeypatch, overrides):
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)
    cfg = compose_config(overrides, output_dir=tmp_path)
    if cfg.data.name == "cifar10" and cfg.method.uses_teacher and cfg.teacher.zoo is None:  # no shipped teacher
        ckpt = tmp_path / "teacher.pt"
        torch.save(build_model(cfg.teacher.arch, num_classes=cfg.data.num_classes, in_channels=3).state_dict(), ckpt)
        cfg = compose_config([*overrides, f"teacher.ckpt={ckpt}"], output_dir=tmp_path)
    data = build_data(cfg)
    teacher = build_teacher(cfg, data) if cfg.method.uses_teacher else None
    module = build_module(cfg, build_student(cfg, data, teacher), teacher, data)
    assert module.method.name == cfg.method.name
    if cfg.method.name == "nayer":
        assert module.synthesizer.embedding.shape[0] == cfg.data.num_classes
    if cfg.get("proxy") is not None:
        assert len(module.synthesizer.pool) == module.proxy_record["proxy/images"] > 0


# --- protocol (b) at LeNet scale: the rows of one benchmark ----------------------------------
LENET_B = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("cifar10_5class_lenet_*.yaml"))


def test_protocol_b_lenet_rows_share_the_shipped_teacher_and_only_kd_proxy_reads_other_images(tmp_path):
    assert LENET_B == [f"cifar10_5class_lenet_{m}" for m in ("deepinversion", "fastdfkd_2", "kd", "kd_proxy", "nayer")]
    for preset in LENET_B:
        cfg = compose_config([f"experiment={preset}"], output_dir=tmp_path)
        assert preset == f"cifar10_5class_lenet_{cfg.method.name}"
        assert (cfg.data.name, list(cfg.data.classes), cfg.data.num_classes) == ("cifar10", [0, 1, 2, 3, 4], 5)
        assert (cfg.teacher.zoo, cfg.student.arch) == ("lenet5_bn_cifar10_5class", "lenet5_half")
        if cfg.method.name == "kd_proxy":
            assert (cfg.proxy.name, cfg.proxy.split, list(cfg.proxy.classes)) == ("cifar10", "train", [5, 6, 7, 8, 9])
        else:  # a proxy would seed a data-free method's pool with real images
            assert cfg.get("proxy") is None


def test_the_shipped_five_class_lenet_teacher_records_its_preset_hash_and_statistics():
    entry = zoo_entry("lenet5_bn_cifar10_5class")
    assert (entry.arch, entry.dataset, entry.num_classes, entry.in_channels) == ("lenet5_bn", "cifar10", 5, 3)
    assert entry.command == "dfkd-train experiment=teacher_cifar10_5class_lenet" and 0 < entry.test_acc < 1
    assert sha256(entry.path()) == entry.sha256 and entry.metadata["activations"]["layers"]


@pytest.mark.parametrize("preset", LENET_B)
def test_protocol_b_lenet_row_runs_a_few_steps_with_the_shipped_teacher(preset, tmp_path, monkeypatch):
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar)
    cfg = compose_config([f"experiment={preset}", *FAST, "callbacks=none"], output_dir=tmp_path / "run")
    shrink(cfg)
    assert 0.0 <= run(cfg)["test/acc"] <= 1.0


def test_a_missing_proxy_dataset_names_the_proxys_keys(compose_cfg, tmp_path):
    from dfkd_lab.data.proxy import load_proxy

    cfg = compose_cfg("method=kd_proxy", f"proxy.root={tmp_path}", "proxy.download=false")
    with pytest.raises(sources.DatasetUnavailable, match=r"^proxy=cifar10: .* and proxy\.download=false$"):
        load_proxy(cfg.proxy, build_data(cfg))


def test_a_missing_proxy_folder_names_proxy_root(compose_cfg, tmp_path):
    from dfkd_lab.data.proxy import load_proxy

    cfg = compose_cfg("method=kd_proxy", "proxy=image_folder", f"proxy.root={tmp_path / 'none'}")
    with pytest.raises(sources.DatasetUnavailable, match=rf"^proxy=image_folder: proxy\.root={tmp_path}/none has no 'train'"):
        load_proxy(cfg.proxy, build_data(cfg))
