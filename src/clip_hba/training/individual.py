"""Individualized CLIP-HBA-MEG models: one run per participant, one after another or on Ray."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from clip_hba._validation import InputError, check_option, preview
from clip_hba.meg.store import RDMStore
from clip_hba.training.config import MegFitConfig
from clip_hba.training.fanout import (
    Fit,
    check_task_resources,
    fit_on_ray,
    fit_participant,
    import_ray,
    load_result,
)
from clip_hba.training.meg import MegFitResult, fit_meg
from clip_hba.training.runs import RunDir

__all__ = ["BACKENDS", "INITS", "fit_individuals", "participant_configs"]

Init = Literal["group", "behavior", "base"]
INITS: tuple[str, ...] = ("group", "behavior", "base")
Backend = Literal["sequential", "ray"]
BACKENDS: tuple[str, ...] = ("sequential", "ray")


def participant_configs(
    template: MegFitConfig,
    participant: str,
    out: str | os.PathLike,
    *,
    init: Init = "group",
    group_run: str | os.PathLike | None = None,
    init_behavior: str | os.PathLike | None = None,
    resume: bool = False,
) -> dict[str, MegFitConfig]:
    """The settings of each participant's run, ``out/<participant>``, for every backend.

    ``template``'s ``out``, ``participant``, ``init_meg`` and ``init_behavior`` are replaced per
    participant (see `fit_individuals`). Without ``resume``, participants whose runs exist are
    refused before any is fitted.
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
    configs = {
        person: dataclasses.replace(
            template,
            out=str(Path(out) / person),
            participant=person,
            init_meg=None if init != "group" else str(group_run),
            init_behavior=None if init != "behavior" else str(init_behavior),
        )
        for person in chosen
    }
    begun = [p for p, config in configs.items() if RunDir(config.out).has_checkpoint()]
    if not resume and begun:
        raise InputError(
            f"{out} already holds a run of {preview(begun)}; use --resume to continue them "
            "(finished runs are kept) or another --out."
        )
    return configs


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
    backend: Backend = "sequential",
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
    max_retries: int = 2,
    fit: Fit = fit_meg,
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
        Continue the participants whose runs had begun and keep those that finished (the
        others start); without it, existing runs are refused.
    allow_unfinished : bool
        Start from a group or behaviour run whose training did not finish.
    options_given : collection of str, optional
        With ``resume``: the command-line options given (see `RunDir.resumed_config`).
    backend : {"sequential", "ray"}
        One participant after another in this process, or one Ray task per participant
        (`fit_on_ray`; the runs are the same).
    address : str, optional
        Ray: the cluster (``ray://HOST:10001``); default a local Ray started for the fit.
    cpus_per_task, gpus_per_task : float
        Ray: the resources each participant's task reserves (the task uses as many torch
        threads as CPUs).
    max_retries : int
        Ray: how often a failed task is retried (continuing its checkpoint) before the
        participant is reported failed (`ParticipantsFailed`, after all the others).
    fit : callable
        Fits one run: `fit_meg`, or a function with its signature.

    Returns
    -------
    dict participant id -> MegFitResult
    """
    check_option("backend", backend, BACKENDS)
    if backend == "sequential" and address is not None:
        raise InputError(f"--address {address} is for --backend ray; add --backend ray.")
    if backend == "ray" and template.devices > 1:
        raise InputError(
            f"--devices {template.devices} starts processes of its own; with --backend ray "
            "each participant is one task: give it GPUs with --gpus-per-task."
        )
    check_task_resources(cpus_per_task, gpus_per_task, max_retries)
    if backend == "ray":
        import_ray()  # before the store is opened: a missing extra is refused first
    configs = participant_configs(
        template,
        participant,
        out,
        init=init,
        group_run=group_run,
        init_behavior=init_behavior,
        resume=resume,
    )
    common = dict(allow_unfinished=allow_unfinished, options_given=options_given)
    if backend == "ray":
        return fit_on_ray(
            configs,
            fit,
            address=address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            max_retries=max_retries,
            resume=resume,
            verbose=verbose,
            **common,
        )
    results = {}
    for person in tqdm(configs, desc="Participants", disable=not verbose or len(configs) == 1):
        config = configs[person]
        result = fit_participant(config, fit, resume=resume, verbose=verbose, **common)
        results[person] = result or load_result(RunDir(config.out), config.device)
    return results
