"""Exchange with rsatoolbox: `RDM` <-> ``rsatoolbox.rdm.RDMs`` (``pip install 'clip-hba[rsa]'``)."""

from __future__ import annotations

from typing import Any

from clip_hba._validation import InputError
from clip_hba.rsa.rdms import RDM

__all__ = ["from_rsatoolbox", "to_rsatoolbox"]


def to_rsatoolbox(rdm_: RDM, descriptor: str = "concept_id") -> Any:
    """Convert to an ``rsatoolbox.rdm.RDMs`` holding one RDM, concept ids as pattern descriptor."""
    rdms_cls = _rsatoolbox_rdms()
    return rdms_cls(
        dissimilarities=rdm_.condensed[None, :].copy(),
        dissimilarity_measure=rdm_.metric or "unknown",
        pattern_descriptors={descriptor: list(rdm_.concept_ids)},
    )


def from_rsatoolbox(rdms: Any, index: int = 0, descriptor: str = "concept_id") -> RDM:
    """Take RDM number ``index`` of an ``rsatoolbox.rdm.RDMs``, with ids from ``descriptor``."""
    _rsatoolbox_rdms()
    if descriptor not in rdms.pattern_descriptors:
        raise InputError(
            f"The RDMs have no pattern descriptor {descriptor!r}; they have "
            f"{sorted(rdms.pattern_descriptors)}."
        )
    if not 0 <= index < rdms.n_rdm:
        raise InputError(f"Invalid RDM index {index}: the RDMs hold {rdms.n_rdm}.")
    ids = [str(c) for c in rdms.pattern_descriptors[descriptor]]
    return RDM(rdms.get_vectors()[index], ids, rdms.dissimilarity_measure)


def _rsatoolbox_rdms() -> Any:
    try:
        from rsatoolbox.rdm import RDMs
    except ImportError:
        raise InputError(
            "rsatoolbox is not installed; install it with: pip install 'clip-hba[rsa]'"
        ) from None
    return RDMs
