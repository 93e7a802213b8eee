"""ATEX: adversarial training on explanations (Tang et al., Eq. 4 to 6).

The student ``g`` (a copy of the model ``f``) is fine-tuned with

    ``J(g, f, x) = L(g(x), f(x)) + alpha * sum_{x^i in I(x)} sum_{x^p in P(x^i)} L(g(x^p), f(x^i))``

where ``L`` is the KL divergence of temperature-``T`` softened outputs (distillation),
``x^i = x + d1 phi / ||phi||`` shifts ``x`` along its SmoothGrad explanation ``phi`` of ``f``
(Eq. 5, ``d1 ~ U(-D1, D1)``) and ``x^p = x^i + d2 phi_perp / ||phi_perp||`` moves each shifted
sample perpendicular to it (Eq. 6, ``d2 ~ U(-D2, D2)``), with
``phi_perp = u - phi <u, phi> / ||phi||^2`` for ``u ~ U(0, D2)``. The perpendicular samples
must keep the prediction of their shifted sample, which fixes the local explanation.

Defaults follow the reference settings (DESIGN.md): ``eps = 0.08``, ``D1 = D2 = 4 eps``,
8 perpendicular copies, SmoothGrad with 10 samples and ``sigma = eps``, ``T = 4``, Adam
lr 1.5e-3, batch 100, 2 epochs. Implemented as in the paper, not as the public code: the
projection keeps the sign of ``<u, phi>`` (the code's projection is sign-blind).
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_call, check_int, check_real, forward
from ..explainers import explain
from ..training import fit, stream_orders


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )


def perpendicular(u: Tensor, phi: Tensor) -> Tensor:
    """``u - phi <u, phi> / ||phi||^2`` per sample: the part of ``u`` orthogonal to ``phi``."""
    flat_u, flat_phi = u.flatten(1), phi.flatten(1)
    coef = (flat_u * flat_phi).sum(1, keepdim=True) / flat_phi.pow(2).sum(1, keepdim=True).clamp(min=1e-24)
    return (flat_u - coef * flat_phi).reshape(u.shape)


def _unit(v: Tensor) -> Tensor:
    return v / v.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, *([1] * (v.dim() - 1)))


def atex_samples(
    teacher: nn.Module, x: Tensor, *, eps: float, shift: float, copies: int, samples: int,
    generator: torch.Generator,
) -> Tuple[Tensor, Tensor]:
    """The shifted samples ``x^i`` (one per input) and ``copies`` perpendicular ``x^p`` each.

    Returns ``(x_i (N, ...), x_p (copies * N, ...))``, ``x_p`` ordered copy-major.
    """
    n = x.shape[0]
    phi = explain(teacher, x, "smoothgrad", samples=samples, sigma=eps, relative=False,
                  seed=int(torch.randint(0, 2**31, (), generator=generator)))
    shape = (n,) + (1,) * (x.dim() - 1)
    dev = x.device  # the noise is drawn on the CPU from the generator, the same on every device
    d1 = ((torch.rand(shape, generator=generator) * 2 - 1) * shift).to(dev, x.dtype)
    x_i = x + d1 * _unit(phi)
    u = (torch.rand((copies,) + tuple(x.shape), generator=generator) * shift).to(dev, x.dtype)
    phi_rep = phi.unsqueeze(0).expand_as(u).reshape(copies * n, *x.shape[1:])
    perp = _unit(perpendicular(u.reshape(copies * n, *x.shape[1:]), phi_rep))
    d2 = ((torch.rand((copies * n,) + (1,) * (x.dim() - 1), generator=generator) * 2 - 1) * shift).to(dev, x.dtype)
    x_p = x_i.repeat(copies, *([1] * (x.dim() - 1))) + d2 * perp
    return x_i, x_p


def perpendicular_kl(student: nn.Module, teacher: nn.Module, x: Tensor, *, eps: float, shift: float, copies: int,
                     samples: int, temperature: float, generator: torch.Generator) -> Tensor:
    """ATEX's regulariser before its weights (Tang et al., Eq. 4, second term): the distillation
    loss of the student at the perpendicular samples ``x_p`` against the teacher at the shifted
    samples ``x_i`` they were drawn around (:func:`atex_samples`), one mean over all ``copies``
    per input. The one place both :func:`atex_finetune` and the ``atex`` regularizer of
    :func:`~manipex.defenses.train_robust` compute it."""
    x_i, x_p = atex_samples(teacher, x, eps=eps, shift=shift, copies=copies, samples=samples, generator=generator)
    with torch.no_grad():  # the teacher's outputs are fixed targets
        t_i = teacher(x_i)
    return distillation_loss(student(x_p), t_i.repeat(copies, 1), temperature)


def atex_finetune(  # noqa: PLR0913 -- Tang et al.'s hyperparameters, each a keyword
    model: nn.Module,
    x: Tensor,
    *,
    eps: float = 0.08,
    shift: Optional[float] = None,
    copies: int = 8,
    samples: int = 10,
    temperature: float = 4.0,
    alpha: float = 1.0,
    lr: float = 1.5e-3,
    batch_size: int = 100,
    epochs: int = 2,
    seed: int = 0,
    progress: bool = True,
    deterministic: bool = True,
) -> nn.Module:
    """Fine-tune a copy of ``model`` with ATEX (Tang et al., Eq. 4); returns it in eval mode.

    Args:
        model: the teacher ``f`` (eval mode, left unchanged).
        x: training inputs (labels are not needed: the teacher's outputs are the targets).
        eps: attack budget the defense is tuned for; SmoothGrad uses ``sigma = eps``.
        shift: ``D1 = D2``, the shift magnitudes (default ``4 * eps``).
        copies: perpendicular samples per shifted sample.
        samples: SmoothGrad samples for the explanation direction ``phi``.
        temperature, alpha: distillation temperature and weight of the regulariser.
        lr, batch_size, epochs: Adam schedule. seed: sampling and batch order.
        progress: show a progress bar.
        deterministic: fine-tune on one intra-op thread, so that the weights are bit-identical
            whatever the thread count (as :func:`manipex.models.train_classifier`).
    """
    where = "atex_finetune"
    check_call(model, x, where=where)
    for name, value in (("copies", copies), ("samples", samples), ("batch_size", batch_size), ("epochs", epochs)):
        check_int(value, where=where, name=name, ge=1)
    for name, value in (("eps", eps), ("temperature", temperature), ("lr", lr)):
        check_real(value, where=where, name=name, gt=0)
    check_real(alpha, where=where, name="alpha", ge=0)
    check_real(shift, where=where, name="shift", gt=0, allow_none=True)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    check_bool(progress, where=where, name="progress")
    check_bool(deterministic, where=where, name="deterministic")
    with torch.no_grad():
        forward(model, x[:1], where=where)  # a model that fails on x, or returns no logits: before training
    shift = 4 * eps if shift is None else shift
    student = copy.deepcopy(model)
    for p in student.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)  # the batches' order and every draw of the samples

    def step(idx, epoch, index):
        xb = x[idx.to(x.device)]
        with torch.no_grad():  # the teacher's outputs are fixed targets
            t_x = model(xb)
        loss = distillation_loss(student(xb), t_x, temperature)
        kl = perpendicular_kl(student, model, xb, eps=eps, shift=shift, copies=copies, samples=samples,
                              temperature=temperature, generator=generator)
        return loss + alpha * copies * kl, {}

    fit(student, x.shape[0], step, params=list(student.parameters()), epochs=epochs, lr=lr, batch_size=batch_size,
        orders=stream_orders(x.shape[0], generator), deterministic_on=x.device if deterministic else None,
        bar={"desc": "ATEX", "enabled": progress, "postfix": lambda epoch, loss, terms: {"loss": f"{loss.item():.4g}"}})
    return student.eval()
