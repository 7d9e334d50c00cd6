"""Differentiable losses on representational geometry, shared by the behaviour and MEG trainers.

`masked_pearson` is the one Pearson r of training losses (NaN target pairs masked out);
`rdm_loss` compares the geometry of two sets of embeddings: 1 - Pearson r between their RDMs
(1 - Pearson between rows, `clip_hba.rsa.rdms.rdm_torch`), the RDM term of the MEG loss and
the geometry term of CLIP-HBA-Behavior (``--rdm-loss-weight``).
"""

from __future__ import annotations

import torch

from clip_hba.rsa.rdms import rdm_torch

__all__ = ["RDM_EPS", "masked_pearson", "rdm_loss"]

RDM_EPS = 1e-8  # floor of row norms in training RDMs: a constant row stays finite


def masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson r along the last axis over the entries where ``mask`` holds.

    Parameters
    ----------
    a, b : Tensor, shape (..., n)
    mask : Tensor of bool, shape (..., n)

    Returns
    -------
    Tensor, shape (...); 0 where either side is constant over the mask.
    """
    weight = mask.to(a.dtype)
    count = weight.sum(-1, keepdim=True).clamp_min(1.0)
    a = torch.where(mask, a, 0.0)
    b = torch.where(mask, b, 0.0)
    ac = (a - (a * weight).sum(-1, keepdim=True) / count) * weight
    bc = (b - (b * weight).sum(-1, keepdim=True) / count) * weight
    return (ac * bc).sum(-1) / (ac.norm(dim=-1) * bc.norm(dim=-1)).clamp_min(1e-12)


def rdm_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Pearson r between the RDMs (1 - Pearson between rows) of two embeddings.

    Parameters
    ----------
    predicted, target : Tensor, shape (n_items, n_dims)
        Rows are items (e.g. the concepts of a batch); ``target`` is not differentiated.

    Returns
    -------
    Tensor, scalar in [0, 2]; 0 with fewer than 3 items (no geometry to compare).
    """
    if predicted.shape[0] < 3:
        return predicted.new_zeros(())
    model_rdm = rdm_torch(predicted, "pearson", eps=RDM_EPS)
    target_rdm = rdm_torch(target.to(predicted.dtype), "pearson", eps=RDM_EPS)
    everything = torch.ones_like(model_rdm, dtype=torch.bool)
    return 1.0 - masked_pearson(model_rdm, target_rdm.detach(), everything)
