"""Response-based distillation losses on logits."""

import torch
from torch.nn import functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def soft_target_kd(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0):
    """KD against stored probabilities (e.g. ZSKD's sampled soft labels) instead of live logits."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, target_probs.float(), reduction="batchmean") * t * t


def logit_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Mean absolute difference of logits (DFAD's discrepancy)."""
    return (student_logits.float() - teacher_logits.float()).abs().mean()


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 1.0, eps: float = 1e-7):
    """Jensen-Shannon divergence 0.5 KL(P||M) + 0.5 KL(Q||M), batch mean, with clamped probabilities."""
    p = F.softmax(logits_a.float() / temperature, dim=1).clamp(eps, 1)
    q = F.softmax(logits_b.float() / temperature, dim=1).clamp(eps, 1)
    m = 0.5 * (p + q)
    kl_pm = (p * (p.log() - m.log())).sum(1)
    kl_qm = (q * (q.log() - m.log())).sum(1)
    return (0.5 * kl_pm + 0.5 * kl_qm).mean()
