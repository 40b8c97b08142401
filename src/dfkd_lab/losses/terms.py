"""The built-in loss terms, registered by the name ``loss.weights`` gives them.

Each is the pure function of another losses/ module under the name of what it does; its
parameters name the inputs it reads. Terms a synthesizer minimises in order to *seek*
something are negated here (``adversarial_kl`` is minus a KL: minimising it seeks
disagreement). docs/changelog.md lists the names that were renamed.
"""

import torch
from torch.nn import functional as F

from .adversarial import agreement_masked_kl
from .attention import attention_loss
from .contrastive import info_nce
from .entropy import activation_l1, batch_entropy, instance_entropy, one_hot_ce
from .feature import hint_mse
from .kd import js_divergence, kd_kl, logit_l1, soft_target_kd
from .priors import l2_norm, total_variation_l1, total_variation_l2
from .registry import register_loss
from .relation import fsp_loss


def per_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's logits repeated once per member of a student ensemble (DFQ stacks its
    members' logits along the batch), so a batch-mean term is the mean over the members."""
    return teacher_logits.repeat(student_logits.shape[0] // teacher_logits.shape[0], 1)


# --- the student's terms ---------------------------------------------------------------------
@register_loss("kd")
def kd(student_logits, teacher_logits, temperature):
    """KL(teacher || student) at the temperature, times T^2 (Hinton et al. 2015)."""
    return kd_kl(student_logits, teacher_logits, temperature)


@register_loss("soft")
def soft(student_logits, soft_targets, temperature):
    """KD against the soft targets stored with synthetic images (ZSKD, Wang 2021) instead of live logits."""
    if soft_targets is None:
        raise ValueError("loss.weights.soft needs a synthesizer that stores soft targets")
    return soft_target_kd(student_logits, soft_targets, temperature)


@register_loss("l1")
def l1(student_logits, teacher_logits):
    """Mean absolute difference of student and teacher logits (DFAD's student loss)."""
    return logit_l1(student_logits, teacher_logits)


@register_loss("ce")
def ce(student_logits, labels, label_smoothing=0.0):
    """Cross-entropy of the student on the real labels, optionally smoothed (``loss.label_smoothing``)."""
    return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


@register_loss("hint")
def hint(projected_student_features, teacher_features):
    """FitNet hints: MSE of every projected student stage against the teacher's, summed."""
    return sum(hint_mse(p, t) for p, t in zip(projected_student_features, teacher_features))


@register_loss("fsp")
def fsp(projected_student_features, teacher_features):
    """FSP matrices between consecutive stages (Yim et al. 2017)."""
    return fsp_loss(projected_student_features, teacher_features)


@register_loss("at")
def at(student_features, teacher_features):
    """Attention transfer between the stages of student and teacher (Zagoruyko & Komodakis 2017)."""
    return attention_loss(student_features, teacher_features)


# --- what synthesis asks of the teacher ------------------------------------------------------
@register_loss("argmax_ce")
def argmax_ce(teacher_logits):
    """Cross-entropy of the teacher against its own argmax: confident samples (DAFL's one-hot loss)."""
    return one_hot_ce(teacher_logits)


@register_loss("target_ce")
def target_ce(teacher_logits, target_classes, label_smoothing=0.0):
    """Cross-entropy of the teacher against target classes drawn for the batch (DeepInversion,
    CMI), optionally against smoothed (soft) targets (NAYER)."""
    return F.cross_entropy(teacher_logits.float(), target_classes, label_smoothing=label_smoothing)


@register_loss("ie")
def ie(teacher_logits):
    """Minus the entropy of the batch-mean prediction: every class equally often (DAFL's information entropy)."""
    return -batch_entropy(teacher_logits)


@register_loss("ent")
def ent(teacher_logits):
    """Mean entropy of each sample's prediction: confident samples (DFQ)."""
    return instance_entropy(teacher_logits)


@register_loss("activation")
def activation(teacher_feature):
    """Minus the mean absolute value of a teacher feature map: strong activations (DAFL, Wang 2021)."""
    return -activation_l1(teacher_feature)


@register_loss("bn")
def bn(bn_layer_losses):
    """BatchNorm-statistics matching: the per-layer gaps the teacher's BN hooks measured, summed."""
    return torch.stack(bn_layer_losses).sum()


@register_loss("match")
def match(teacher_logits, soft_targets, match_temperature):
    """KL(target || softmax(teacher / T)) * T^2 against sampled soft targets (ZSKD, Wang 2021)."""
    return soft_target_kd(teacher_logits, soft_targets, match_temperature)


@register_loss("comp")
def comp(teacher_logits, student_logits, comp_temperature):
    """1 - JS(teacher, student): images the student disagrees with the teacher on (Adaptive DeepInversion)."""
    return 1 - js_divergence(teacher_logits, student_logits, comp_temperature)


@register_loss("cr")
def cr(contrastive_views, cr_temperature):
    """InfoNCE between two views of each image, earlier images as negatives (CMI)."""
    queries, keys = contrastive_views
    return info_nce(queries, keys, cr_temperature)


# --- adversarial: the generator seeks what the student gets wrong ------------------------------
@register_loss("adversarial_kl")
def adversarial_kl(student_logits, teacher_logits, temperature):
    """Minus KL(teacher || student) at the KD temperature (ZSKT, DFQ)."""
    return -kd_kl(student_logits, per_student(teacher_logits, student_logits), temperature)


@register_loss("adversarial_kl_agreement")
def adversarial_kl_agreement(student_logits, teacher_logits):
    """Minus KL(teacher || student) at T=1, only where both pick the same class (CMI, FastDFKD)."""
    return -agreement_masked_kl(student_logits, teacher_logits)


@register_loss("adversarial_l1")
def adversarial_l1(student_logits, teacher_logits):
    """Minus the mean absolute logit difference (DFAD's generator loss)."""
    return -logit_l1(student_logits, per_student(teacher_logits, student_logits))


# --- image priors ------------------------------------------------------------------------------
@register_loss("tv")
def tv(images):
    """L1 total variation: mean absolute difference of neighbouring pixels."""
    return total_variation_l1(images)


@register_loss("tv_l2")
def tv_l2(images):
    """L2 total variation: root of summed squared neighbour differences, per image."""
    return total_variation_l2(images)


@register_loss("l2")
def l2(images):
    """Batch mean of each image's L2 norm."""
    return l2_norm(images)
