"""Differentiable losses on representational geometry, shared by the behaviour and MEG trainers.

`masked_pearson` is the one Pearson r of training losses (NaN target pairs masked out), which
the MEG loss's RDM and temporal-generalisation terms use; `rdm_loss` compares the geometry of
two sets of embeddings, the geometry term of CLIP-HBA-Behavior (``--rdm-loss-weight``): the
same 1 - Pearson r between RDMs as the MEG RDM term, with both RDMs made by
`clip_hba.rsa.rdms.rdm_torch` (1 - Pearson between rows, as `MegModel.rdms` makes the MEG
model's).
"""

from __future__ import annotations

import torch

from clip_hba.rsa.rdms import RDM_EPS, rdm_torch

__all__ = ["masked_pearson", "rdm_loss"]


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
