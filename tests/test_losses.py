"""Every loss term against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from dfkd_lab.losses.attention import attention_loss, attention_map
from dfkd_lab.losses.bn import batch_stats, bn_stat_loss
from dfkd_lab.losses.entropy import activation_l1, batch_entropy, instance_entropy, one_hot_ce
from dfkd_lab.losses.feature import hint_mse, match_spatial
from dfkd_lab.losses.kd import js_divergence, kd_kl, logit_l1, soft_target_kd
from dfkd_lab.losses.priors import l2_norm, total_variation_l1, total_variation_l2
from dfkd_lab.losses.registry import (
    LOSS_TERMS,
    Lazy,
    UnknownLossTerm,
    compute_terms,
    loss_term,
    reads,
    register_loss,
)
from dfkd_lab.losses.relation import fsp_loss, fsp_matrix
from dfkd_lab.losses.weighting import UnknownLossWeight, check_weights, weighted_sum

LN3 = math.log(3.0)
# softmax([ln 3, 0]) = [3/4, 1/4]; softmax([0, 0]) = [1/2, 1/2]
KL_34_HALF = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- kd.py ------------------------------------------------------------------------------------
def test_kd_kl_at_t1_is_the_kl_of_teacher_to_student():
    assert kd_kl(t([0.0, 0.0]), t([LN3, 0.0])).item() == pytest.approx(KL_34_HALF, rel=1e-6)


def test_kd_kl_scales_logits_by_t_and_the_loss_by_t_squared():
    # at T=2 the teacher's logits [ln 3, 0] become [ln 3 / 2, 0]: p = [sqrt3, 1] / (sqrt3 + 1)
    p1 = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)
    assert kd_kl(t([0.0, 0.0]), t([LN3, 0.0]), temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_kd_kl_is_zero_for_equal_logits_and_averages_over_the_batch():
    same = t([1.0, 2.0, 3.0])
    assert kd_kl(same, same).item() == pytest.approx(0.0, abs=1e-7)
    batch = kd_kl(t([0.0, 0.0], [5.0, 5.0]), t([LN3, 0.0], [5.0, 5.0]))
    assert batch.item() == pytest.approx(KL_34_HALF / 2, rel=1e-6)


def test_soft_target_kd_uses_the_given_probabilities():
    assert soft_target_kd(t([0.0, 0.0]), t([0.75, 0.25])).item() == pytest.approx(KL_34_HALF, rel=1e-6)


def test_logit_l1_is_the_mean_absolute_difference():
    assert logit_l1(t([1.0, 2.0]), t([0.0, 4.0])).item() == pytest.approx(1.5)


def test_js_divergence_of_mirrored_distributions():
    # P = [3/4, 1/4], Q = [1/4, 3/4]: M = [1/2, 1/2], and KL(P||M) = KL(Q||M)
    assert js_divergence(t([LN3, 0.0]), t([0.0, LN3])).item() == pytest.approx(KL_34_HALF, rel=1e-5)
    assert js_divergence(t([LN3, 0.0]), t([LN3, 0.0])).item() == pytest.approx(0.0, abs=1e-7)


# --- feature.py / relation.py / attention.py -------------------------------------------------
def test_match_spatial_average_pools_to_the_target_size():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = match_spatial(x, torch.zeros(1, 1, 2, 2))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_hint_mse():
    assert hint_mse(torch.full((1, 2, 2, 2), 3.0), torch.ones(1, 2, 2, 2)).item() == pytest.approx(4.0)


def test_fsp_matrix_and_loss():
    a = t([1.0, 2.0], [3.0, 4.0]).view(1, 1, 2, 2)
    b = torch.cat([torch.ones(1, 1, 2, 2), a], dim=1)
    # G[0, j] = mean(a * b_j): mean(a) = 10/4, mean(a^2) = 30/4
    assert fsp_matrix(a, b).flatten().tolist() == pytest.approx([2.5, 7.5])
    # student pair: G = [2.5, 7.5]; teacher pair (a*2, b): G = [5, 15] -> mean of squared diffs
    loss = fsp_loss([a, b], [2 * a, b])
    assert loss.item() == pytest.approx((2.5**2 + 7.5**2) / 2)


def test_attention_map_and_loss():
    s = t([1.0, 1.0], [1.0, 3.0]).view(1, 2, 1, 2)  # channel means of squares: [1, 5]
    assert attention_map(s).flatten().tolist() == pytest.approx([1 / math.sqrt(26), 5 / math.sqrt(26)])
    teacher = torch.ones(1, 2, 1, 2)  # map [1, 1] / sqrt 2
    expected = math.hypot(1 / math.sqrt(26) - 1 / math.sqrt(2), 5 / math.sqrt(26) - 1 / math.sqrt(2))
    assert attention_loss([s], [teacher]).item() == pytest.approx(expected, rel=1e-6)
    assert attention_loss([s, s], [teacher, teacher]).item() == pytest.approx(2 * expected, rel=1e-6)


# --- bn.py / priors.py / entropy.py ------------------------------------------------------------
def test_batch_stats_are_per_channel_with_biased_variance():
    x = torch.tensor([1.0, 3.0, 10.0, 10.0]).view(2, 2, 1, 1)  # channel 0: {1, 10}, channel 1: {3, 10}
    mean, var = batch_stats(x)
    assert mean.tolist() == pytest.approx([5.5, 6.5])
    assert var.tolist() == pytest.approx([20.25, 12.25])


def test_batch_stats_of_a_batchnorm1d_input_are_over_the_batch():
    x = t([1.0, 3.0], [10.0, 10.0])  # (N=2, C=2): channel 0: {1, 10}, channel 1: {3, 10}
    mean, var = batch_stats(x)
    assert mean.tolist() == pytest.approx([5.5, 6.5])
    assert var.tolist() == pytest.approx([20.25, 12.25])


def test_bn_stat_loss_sums_the_two_l2_norms():
    loss = bn_stat_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]),
                        torch.zeros(2), torch.tensor([1.0, 4.0]))
    assert loss.item() == pytest.approx(2.0 + 3.0)


def test_total_variation_and_l2_norm():
    x = t([0.0, 1.0], [2.0, 4.0]).view(1, 1, 2, 2)
    # vertical differences 2, 3; horizontal differences 1, 2
    assert total_variation_l1(x).item() == pytest.approx(2.5 + 1.5)
    assert total_variation_l2(x).item() == pytest.approx(math.sqrt(4 + 9 + 1 + 4))
    assert l2_norm(t([3.0, 4.0], [0.0, 1.0])).item() == pytest.approx((5.0 + 1.0) / 2)


def test_entropy_terms():
    assert one_hot_ce(t([LN3, 0.0])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert instance_entropy(torch.zeros(3, 4)).item() == pytest.approx(math.log(4), rel=1e-6)
    assert batch_entropy(t([100.0, 0.0], [0.0, 100.0])).item() == pytest.approx(math.log(2), rel=1e-6)
    assert batch_entropy(t([100.0, 0.0], [100.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert activation_l1(t([-1.0, 2.0, -3.0])).item() == pytest.approx(2.0)


# --- weighting.py ------------------------------------------------------------------------------
def test_weighted_sum():
    terms = {"kd": torch.tensor(2.0), "ce": torch.tensor(3.0)}
    assert weighted_sum(terms, {"kd": 0.5, "ce": 2.0, "at": 7.0}).item() == pytest.approx(7.0)


# --- registry.py -------------------------------------------------------------------------------
def test_compute_terms_calls_each_weighted_term_with_the_inputs_it_names_in_order():
    made = []

    def student_forward():
        made.append("student")
        return t([0.0, LN3])

    inputs = {"teacher_logits": t([LN3, 0.0]), "student_logits": Lazy(student_forward), "temperature": 1.0}
    terms = compute_terms(("adversarial_kl", "argmax_ce", "ie"), {"argmax_ce": 1.0, "adversarial_kl": 2.0, "ie": 0.0},
                          inputs)
    assert list(terms) == ["adversarial_kl", "argmax_ce"]  # the order of the names: the order they are summed
    assert terms["argmax_ce"].item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # KL(T || S) for p_t = (3/4, 1/4), p_s = (1/4, 3/4), negated
    assert terms["adversarial_kl"].item() == pytest.approx(-0.5 * math.log(3), rel=1e-5)
    assert made == ["student"]
    assert compute_terms(("adversarial_kl",), {"adversarial_kl": 0.0}, {}) == {}  # unweighted: inputs never read


def test_adversarial_terms_average_over_a_stacked_student_ensemble():
    teacher = t([LN3, 0.0])
    agreeing, disagreeing = t([LN3, 0.0]), t([0.0, LN3])
    inputs = {"teacher_logits": teacher, "student_logits": torch.cat([agreeing, disagreeing]), "temperature": 1.0}
    terms = compute_terms(("adversarial_kl", "adversarial_l1"), {"adversarial_kl": 1, "adversarial_l1": 1}, inputs)
    assert terms["adversarial_kl"].item() == pytest.approx(-0.25 * math.log(3), rel=1e-5)  # (0 + 0.5 ln 3) / 2
    assert terms["adversarial_l1"].item() == pytest.approx(-LN3 / 2, rel=1e-6)  # (0 + ln 3) / 2


def test_bn_sums_the_layer_gaps_and_activation_rewards_strong_features():
    inputs = {"bn_layer_losses": [torch.tensor(1.5), torch.tensor(2.0)], "teacher_feature": t([-1.0, 3.0])}
    terms = compute_terms(("bn", "activation"), {"bn": 1, "activation": 1}, inputs)
    assert terms["bn"].item() == pytest.approx(3.5) and terms["activation"].item() == pytest.approx(-2.0)


def test_target_ce_is_the_cross_entropy_to_the_drawn_classes_not_the_argmax():
    logits = t([LN3, 0.0])
    terms = compute_terms(("target_ce",), {"target_ce": 1}, {"teacher_logits": logits, "target_classes": torch.tensor([1])})
    assert terms["target_ce"].item() == pytest.approx(-math.log(0.25), rel=1e-6)


def test_reads_tells_whether_a_weighted_term_needs_an_input():
    assert reads(("kd", "at"), {"kd": 1.0, "at": 1.0}, "student_features")
    assert not reads(("kd", "at"), {"kd": 1.0, "at": 0.0}, "student_features")


def test_a_term_reading_an_input_the_caller_does_not_offer_names_both():
    with pytest.raises(TypeError, match=r"'ie' reads 'teacher_logits'.*\['images'\]"):
        compute_terms(("ie",), {"ie": 1.0}, {"images": torch.zeros(1)})


def test_a_term_parameter_with_a_default_may_go_unoffered_and_names_must_be_ordered():
    @register_loss("test_scaled_sum")
    def scaled_sum(images, scale=2.0):
        return scale * images.sum()

    try:
        images = torch.ones(3)
        assert compute_terms(("test_scaled_sum",), {"test_scaled_sum": 1}, {"images": images})["test_scaled_sum"] == 6
        offered = {"images": images, "scale": 1.0}
        assert compute_terms(("test_scaled_sum",), {"test_scaled_sum": 1}, offered)["test_scaled_sum"] == 3
        with pytest.raises(TypeError, match="as a tuple"):
            compute_terms({"test_scaled_sum"}, {"test_scaled_sum": 1}, offered)
    finally:
        del LOSS_TERMS["test_scaled_sum"]


def test_a_term_that_returns_no_scalar_is_named():
    @register_loss("test_per_image")
    def per_image(images):
        return images.sum(dim=1)  # forgot the mean over the batch

    try:
        with pytest.raises(TypeError, match=r"loss term 'test_per_image' \(.*per_image\) returned \(3,\), not a scalar"):
            compute_terms(("test_per_image",), {"test_per_image": 1}, {"images": torch.ones(3, 2)})
        one = compute_terms(("test_per_image",), {"test_per_image": 1}, {"images": torch.ones(1, 2)})  # one number
        assert one["test_per_image"].tolist() == [2.0]
    finally:
        del LOSS_TERMS["test_per_image"]


def test_unknown_and_clashing_term_names_are_refused():
    with pytest.raises(UnknownLossTerm, match=r"'nope'.*'kd'.*@register_loss\('nope'\)"):
        loss_term("nope")

    @register_loss("test_only_term")
    def first(images):
        return images.sum()

    try:
        assert loss_term("test_only_term") is first
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_only_term")(lambda images: images.mean())
    finally:
        del LOSS_TERMS["test_only_term"]


def test_every_term_a_method_declares_is_registered():
    from dfkd_lab.methods.data_free import DataFreeDistillation
    from dfkd_lab.methods.kd import KnowledgeDistillation
    from dfkd_lab.methods.supervised import SupervisedTraining
    from dfkd_lab.synthesis.contrastive import ContrastiveSynthesizer
    from dfkd_lab.synthesis.generator import GeneratorSynthesizer
    from dfkd_lab.synthesis.lopes import ActivationMetadata
    from dfkd_lab.synthesis.meta import MetaSynthesizer
    from dfkd_lab.synthesis.objectives import ClassTargets, DirichletTargets, FeatureGaussian

    declared = [DataFreeDistillation.student_terms, KnowledgeDistillation.loss_terms, SupervisedTraining.loss_terms,
                ContrastiveSynthesizer.terms, MetaSynthesizer.terms, GeneratorSynthesizer.terms, ClassTargets.terms,
                DirichletTargets.terms, FeatureGaussian.terms, ActivationMetadata.terms, ("tv", "tv_l2", "l2")]
    for names in declared:
        assert isinstance(names, tuple)  # ordered: the order terms are summed in
        for name in names:
            assert callable(loss_term(name))


def test_unknown_weight_names_the_term_and_the_known_ones():
    with pytest.raises(UnknownLossWeight, match=r"\['kdd'\].*method=kd.*'kd'"):
        check_weights({"kd": 1.0, "kdd": 1.0}, {"kd", "ce"}, "method=kd")
