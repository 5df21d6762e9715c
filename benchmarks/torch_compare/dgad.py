"""The DGAD training step in idiomatic PyTorch: the attack, the loss, the update."""

import torch
import torch.nn.functional as F

from .settings import BETA, EPS, INIT_STD, LR, MOMENTUM, STEP_SIZE, WEIGHT_DECAY


def kl_per_sample(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) per row."""
    log_p = F.log_softmax(p_logits, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=1))).sum(dim=1)


def _swap(logits, labels, other, mask):
    """Swaps logit[y] and logit[other] in the rows where `mask` holds."""
    true_logit = logits.gather(1, labels[:, None])
    other_logit = logits.gather(1, other[:, None])
    mask = mask[:, None]
    out = logits.clone()
    out.scatter_(1, labels[:, None], torch.where(mask, other_logit, true_logit))
    out.scatter_(1, other[:, None], torch.where(mask, true_logit, other_logit))
    return out


def dgad_loss_torch(s_clean, s_adv, t_clean, t_adv, labels, beta=BETA):
    """DGAD section 6: MAP + ELS on logits + PCR, normalised by the batch (as the method doc)."""
    batch, num_classes = s_clean.shape
    prediction = t_clean.argmax(dim=1)
    misclassified = prediction != labels  # MAP
    t_clean = _swap(t_clean, labels, prediction, misclassified)  # ELS, clean
    others = t_adv.scatter(1, labels[:, None], float("-inf"))
    best_other = others.argmax(dim=1)
    needs_swap = t_adv.gather(1, labels[:, None])[:, 0] < others.max(dim=1).values
    t_adv = _swap(t_adv, labels, best_other, needs_swap)  # ELS, adversarial
    kl = torch.where(misclassified, kl_per_sample(t_clean, s_clean), kl_per_sample(t_adv, s_adv))
    pcr = F.mse_loss(F.softmax(s_adv, dim=1), F.softmax(s_clean, dim=1), reduction="sum")
    return kl.sum() / batch + beta * pcr / (batch * num_classes)


def pgd_kl_torch(student, teacher, x, steps, init_noise=True, autocast=None):
    """The DGAD inner maximisation, both networks in eval mode, gradients to x' only.

    `autocast`: None (float32), or a torch dtype the networks run in under `torch.autocast`
    (the KL and the sign step stay float32, as on our side).
    """
    student.eval()
    x_adv = x.detach()
    if init_noise:
        x_adv = (x_adv + INIT_STD * torch.randn_like(x_adv)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with _autocast(x, autocast):
            s_logits, t_logits = student(x_adv), teacher(x_adv)
        loss = F.kl_div(
            F.log_softmax(s_logits.float(), dim=1),
            F.softmax(t_logits.float(), dim=1),
            reduction="sum",
        )
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + STEP_SIZE * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    student.train()
    return x_adv.detach()


def _autocast(x, dtype):
    """`torch.autocast` to `dtype` on x's device; a no-op context for None (float32)."""
    return torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)


class TorchDGADStep:
    """One DGAD training step in idiomatic PyTorch (what a reference training loop does).

    `autocast`: None (float32), or torch.bfloat16 to run the networks under `torch.autocast`
    (PyTorch's mixed precision; losses on float32 logits). `channels_last`: the networks are
    expected in `torch.channels_last` memory format, and each batch is converted to it on entry,
    as a PyTorch training loop tuned for speed does.
    """

    def __init__(self, student, teacher, steps, autocast=None, channels_last=False):
        self.student, self.teacher, self.steps = student, teacher, steps
        self.autocast, self.channels_last = autocast, channels_last
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.SGD(
            student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

    def __call__(self, x, y, init_noise=True, x_adv=None):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x_adv is None:
            x_adv = pgd_kl_torch(
                self.student, self.teacher, x, self.steps, init_noise, self.autocast
            )
        self.student.train()
        with _autocast(x, self.autocast):
            s_clean = self.student(x)
            s_adv = self.student(x_adv)
            with torch.no_grad():
                t_clean = self.teacher(x)
                t_adv = self.teacher(x_adv)
        logits = (s_clean, s_adv, t_clean, t_adv)
        loss = dgad_loss_torch(*(z.float() for z in logits), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
