"""What a CLIP-HBA-Behavior run fits: its concepts' inputs, split, and rescaled targets."""

from __future__ import annotations

import torch

from clip_hba._validation import InputError
from clip_hba.data.embeddings import ConceptEmbedding
from clip_hba.data.things import load_spose, rescale_minmax, split_concepts
from clip_hba.models.behavior import BehaviorModel
from clip_hba.models.inputs import ConceptInputs, concept_inputs
from clip_hba.rsa.comparisons import compare
from clip_hba.rsa.rdms import RDM
from clip_hba.training.config import BehaviorFitConfig

__all__ = ["ConceptTargets", "rdm_spearman", "training_data"]


def rdm_spearman(
    predicted: torch.Tensor, target: torch.Tensor, concept_ids: tuple[str, ...]
) -> float | None:
    """Spearman rho between the RDMs (1 - Pearson) of predictions and targets (None: < 3)."""
    if len(concept_ids) < 3:
        return None
    rdms = [
        RDM.from_embedding(ConceptEmbedding(v.double().numpy(), concept_ids))
        for v in (predicted, target)
    ]
    return compare(rdms[0], rdms[1], "spearman")


def training_data(
    model: BehaviorModel, config: BehaviorFitConfig
) -> tuple[ConceptInputs, dict[str, torch.Tensor], torch.Tensor, ConceptTargets]:
    """Inputs of the train, validation and held-out concepts, their rows, and the targets.

    Returns
    -------
    inputs : ConceptInputs
    rows : dict with "train", "val", "test" -> row numbers into ``inputs`` (every input of
        each concept of the split; no concept is in two splits)
    target : Tensor, shape (len(inputs), 66), each input's concept's SPoSE embedding rescaled
        to [0, 100] by the minimum and maximum of the 1,806 non-held-out concepts (held-out
        concepts never set the scale)
    concept_target : ConceptTargets, the same targets by concept id
    """
    split = split_concepts(config.seed, config.val_fraction, config.data_dir)
    train_ids, val_ids = _limit(split.train_ids, split.val_ids, config)
    concept_ids = [*train_ids, *val_ids, *split.test_ids]
    inputs = concept_inputs(model.backbone, concept_ids, config.inputs, config.data_dir)
    groups = {"train": train_ids, "val": val_ids, "test": split.test_ids}
    present = {name: [c for c in ids if c in inputs] for name, ids in groups.items()}
    if len(present["train"]) < 2 or len(present["val"]) < 1:
        raise InputError(
            f"Too few training or validation concepts have inputs ({len(present['train'])} and "
            f"{len(present['val'])}; at least 2 and 1 are needed)."
        )
    rows = {name: inputs.rows(ids) for name, ids in present.items()}
    spose = load_spose(config.data_dir)
    scaled = rescale_minmax(spose, reference_ids=[*split.train_ids, *split.val_ids])
    concept_target = ConceptTargets(scaled.select(list(inputs.concepts)))
    return inputs, rows, concept_target(inputs.concept_ids), concept_target


class ConceptTargets:
    """Rescaled SPoSE targets by concept id: ``targets(ids)`` -> Tensor (len(ids), 66).

    Parameters
    ----------
    embedding : ConceptEmbedding
        The targets of every concept that may be asked for.
    """

    def __init__(self, embedding: ConceptEmbedding) -> None:
        self._values = torch.tensor(embedding.values, dtype=torch.float32)
        self._row = {c: k for k, c in enumerate(embedding.concept_ids)}

    def __call__(self, concept_ids: tuple[str, ...] | list[str]) -> torch.Tensor:
        """The targets of ``concept_ids``, in that order, shape (len(concept_ids), n_dims)."""
        return self._values[[self._row[c] for c in concept_ids]]


def _limit(
    train_ids: tuple[str, ...], val_ids: tuple[str, ...], config: BehaviorFitConfig
) -> tuple[list, list]:
    if config.max_concepts is None:
        return list(train_ids), list(val_ids)
    if config.max_concepts > len(train_ids) + len(val_ids):
        raise InputError(
            f"--max-concepts {config.max_concepts} is more than the {len(train_ids) + len(val_ids)}"
            " training and validation concepts; give fewer or leave it out."
        )
    n_val = max(1, round(config.max_concepts * config.val_fraction))
    return list(train_ids[: config.max_concepts - n_val]), list(val_ids[:n_val])
