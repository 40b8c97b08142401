"""Decision-adversarial term of CMI and FastDFKD."""

import torch
from torch.nn import functional as F


def agreement_masked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """KL(T || S) per sample, kept only where teacher and student agree on the class, batch mean.

    A generator maximises it to find samples the student still gets right for the wrong
    reasons, without pushing images across the teacher's decision boundary (where the
    disagreement would come from the teacher changing its mind, not from the student).
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1) * t * t
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return (kl * agree).mean()
