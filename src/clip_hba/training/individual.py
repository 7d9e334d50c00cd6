"""Individualized CLIP-HBA-MEG models: one run per participant, one after another."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from clip_hba._validation import InputError, check_option
from clip_hba.meg.store import RDMStore
from clip_hba.training.config import MegFitConfig
from clip_hba.training.meg import MegFitResult, fit_meg
from clip_hba.training.runs import RunDir

__all__ = ["INITS", "fit_individuals"]

Init = Literal["group", "behavior", "base"]
INITS: tuple[str, ...] = ("group", "behavior", "base")


def fit_individuals(
    template: MegFitConfig,
    participant: str,
    out: str | os.PathLike,
    *,
    init: Init = "group",
    group_run: str | os.PathLike | None = None,
    init_behavior: str | os.PathLike | None = None,
    resume: bool = False,
    allow_unfinished: bool = False,
    verbose: bool = True,
    options_given: Collection[str] | None = None,
) -> dict[str, MegFitResult]:
    """Fit one CLIP-HBA-MEG model per participant, each into ``out/<participant>``.

    Parameters
    ----------
    template : MegFitConfig
        The settings of every run; its ``out``, ``participant``, ``init_meg`` and
        ``init_behavior`` are replaced per participant.
    participant : str
        A participant id of the store, or ``"all"``.
    out : path
        Folder of the runs.
    init : {"group", "behavior", "base"}
        Start from the group MEG run ``group_run``, the behaviour run ``init_behavior``, or
        the base model.
    resume : bool
        Continue the participants whose runs had begun (the others start).
    allow_unfinished : bool
        Start from a group or behaviour run whose training did not finish.
    options_given : collection of str, optional
        With ``resume``: the command-line options given (see `RunDir.resumed_config`).

    Returns
    -------
    dict participant id -> MegFitResult
    """
    check_option("init", init, INITS)
    if init == "group" and group_run is None:
        raise InputError("--init group needs the group MEG run: give --group-run.")
    if init == "behavior" and init_behavior is None:
        raise InputError("--init behavior needs the behaviour run: give --init-behavior.")
    with RDMStore(template.store) as store:
        everyone = list(store.participant_ids)
    chosen = everyone if participant == "all" else [participant]
    unknown = [p for p in chosen if p not in everyone]
    if unknown:
        raise InputError(
            f"Unknown participant {unknown[0]!r}; {template.store} holds {', '.join(everyone)} "
            "(or give 'all')."
        )
    results = {}
    for person in tqdm(chosen, desc="Participants", disable=not verbose or len(chosen) == 1):
        config = dataclasses.replace(
            template,
            out=str(Path(out) / person),
            participant=person,
            init_meg=None if init != "group" else str(group_run),
            init_behavior=None if init != "behavior" else str(init_behavior),
        )
        begun = RunDir(config.out).has_checkpoint()  # resume those who had begun
        results[person] = fit_meg(
            config,
            resume=resume and begun,
            allow_unfinished=allow_unfinished,
            verbose=verbose,
            options_given=options_given,
        )
    return results
