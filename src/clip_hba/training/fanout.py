"""Per-participant MEG runs: one participant's fit as every backend does it, and the fan-out of
the participants over a Ray cluster (one task each).

Ray is an optional extra (``pip install 'clip-hba[ray]'``), imported only when it is used. Each
task writes its own run directory (every file atomically), so a participant that finished is
kept whatever happens to the others; a task that fails is retried by Ray (``max_retries``, on
exceptions too) and the retry continues the participant's checkpoint. The paths of the runs,
the store, the model and the images must be the same on every node (a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clip_hba._validation import InputError, check_range, check_type
from clip_hba.training.config import MegFitConfig
from clip_hba.training.load import load_meg_run
from clip_hba.training.meg import MegFitResult, fit_meg
from clip_hba.training.runs import RunDir

__all__ = [
    "ParticipantsFailed",
    "check_task_resources",
    "fit_on_ray",
    "fit_participant",
    "import_ray",
    "is_finished",
    "load_result",
]

logger = logging.getLogger(__name__)

Fit = Callable[..., MegFitResult]


class ParticipantsFailed(InputError):
    """Some participants' runs failed (after their retries); the others finished.

    ``errors`` maps each failed participant to its error (one line); ``results`` holds the
    finished participants' `MegFitResult`. An `InputError`, so the command line reports it in
    one line with exit status 2.
    """

    def __init__(self, errors: dict[str, str], results: dict[str, MegFitResult]) -> None:
        self.errors = errors
        self.results = results
        detail = "; ".join(f"{person} ({error})" for person, error in errors.items())
        super().__init__(
            f"{len(errors)} of {len(errors) + len(results)} participants failed: {detail}. "
            "The others finished; run again with --resume to retry the failed ones (their "
            "checkpoints are kept)."
        )


def is_finished(run: RunDir) -> bool:
    """Whether ``run`` finished training for good (a run stopped by its time budget can go on)."""
    if not run.is_run() or run.status() != "finished":
        return False
    return not run.read_metrics().get("stopped_by_time_budget", False)


def load_result(run: RunDir, device: str = "auto") -> MegFitResult:
    """A finished MEG run's `MegFitResult`, as `fit_meg` returned it, from its files."""
    metrics = run.read_metrics()
    log = run.load_checkpoint().log
    model = load_meg_run(run, device)
    return MegFitResult(run.path, metrics["best_stage"], metrics["best_val_loss"], log, model)


def fit_participant(
    config: MegFitConfig,
    fit: Fit = fit_meg,
    *,
    resume: bool = False,
    allow_unfinished: bool = False,
    verbose: bool = True,
    options_given: Collection[str] | None = None,
) -> MegFitResult | None:
    """Fit one participant's run (``config.out``) the way both backends do.

    With ``resume``, a run that finished (`is_finished`) is not fitted again (None is
    returned: load it with `load_result`) and a begun one continues; otherwise a new run starts.
    ``fit`` is `fit_meg` or a function with its signature.
    """
    run = RunDir(config.out)
    if resume and is_finished(run):
        return None
    return fit(
        config,
        resume=resume and run.has_checkpoint(),
        allow_unfinished=allow_unfinished,
        verbose=verbose,
        options_given=options_given,
    )


def import_ray() -> Any:
    """The ``ray`` module; `InputError` saying how to install it if it is missing."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "--backend ray needs Ray, which is not installed: pip install 'clip-hba[ray]'."
        ) from None
    return ray


def check_task_resources(cpus_per_task: float, gpus_per_task: float, max_retries: int) -> None:
    """`TypeError` / `InputError` for task resources or retries that cannot be used."""
    check_range("cpus_per_task", cpus_per_task, 0, math.inf, low_open=True)
    check_range("gpus_per_task", gpus_per_task, 0, math.inf)
    check_type("max_retries", max_retries, (int, np.integer), "an integer")
    if max_retries < 0:
        raise InputError(
            f"Invalid value for 'max_retries': expected an integer >= 0, got {max_retries}."
        )


def fit_on_ray(
    configs: dict[str, MegFitConfig],
    fit: Fit = fit_meg,
    *,
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
    max_retries: int = 2,
    resume: bool = False,
    allow_unfinished: bool = False,
    verbose: bool = True,
    options_given: Collection[str] | None = None,
) -> dict[str, MegFitResult]:
    """Fit each participant's run (``configs``: participant -> settings) as one Ray task.

    Uses the Ray connection of the caller if there is one; else connects to ``address``
    (``ray://HOST:10001``; the cluster is left running) or starts a local Ray and stops it at
    the end, also on an error or Ctrl-C. With ``resume`` a finished run is loaded, not fitted
    again. A failed task is retried ``max_retries`` times, each retry continuing the
    participant's checkpoint (an `InputError` is not retried: it would fail alike); then its
    run is marked failed and the others go on. The results are loaded from the runs on this
    machine's CPU.

    Raises
    ------
    ParticipantsFailed
        After every other participant finished, naming those that failed.
    """
    check_task_resources(cpus_per_task, gpus_per_task, max_retries)
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        _connect(ray, address)
    results: dict[str, MegFitResult] = {}
    errors: dict[str, str] = {}
    pending: list = []
    try:
        _check_cluster(ray, cpus_per_task, gpus_per_task)
        task = ray.remote(_fit_task)
        resources = dict(
            num_cpus=cpus_per_task,
            num_gpus=gpus_per_task,
            max_retries=max_retries,
            retry_exceptions=True,
        )
        threads = max(1, int(cpus_per_task))
        done = [p for p, config in configs.items() if resume and is_finished(RunDir(config.out))]
        tasks = {
            task.options(name=f"fit {person}", **resources).remote(
                config, fit, allow_unfinished, options_given, threads
            ): person
            for person, config in configs.items()
            if person not in done
        }
        pending = list(tasks)
        for person in done:  # while the tasks run
            results[person] = load_result(RunDir(configs[person].out), "cpu")
        bar = tqdm(
            total=len(configs), initial=len(results), desc="Participants", disable=not verbose
        )
        with bar:
            while pending:
                [ready], pending = ray.wait(pending, num_returns=1)
                person = tasks[ready]
                run = RunDir(configs[person].out)
                try:
                    error = ray.get(ready)  # a refusal (InputError) comes back as its message
                except ray.exceptions.RayError as err:
                    error = _one_line(err)
                    if run.is_run():  # a crashed worker leaves it "running"
                        run.mark("failed", error)
                if error is None:
                    results[person] = load_result(run, "cpu")
                else:
                    errors[person] = error
                    logger.error("%s failed: %s", person, error)
                bar.set_postfix(participant=person, failed=len(errors))
                bar.update()
    finally:
        for ref in pending:  # interrupted: stop the others' tasks (their runs stay resumable)
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        if started:
            ray.shutdown()
    ordered = {person: results[person] for person in configs if person in results}
    if errors:
        raise ParticipantsFailed({p: errors[p] for p in configs if p in errors}, ordered)
    return ordered


def _check_cluster(ray: Any, cpus_per_task: float, gpus_per_task: float) -> None:
    """Refuse task resources that no node of the cluster has (Ray would wait for ever)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for option, kind, amount in (
        ("--cpus-per-task", "CPU", cpus_per_task),
        ("--gpus-per-task", "GPU", gpus_per_task),
    ):
        largest = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if amount > largest:
            raise InputError(
                f"{option} {amount:g}: no node of the Ray cluster has {amount:g} {kind}(s) "
                f"(the largest has {largest:g}); give fewer, or a cluster with more."
            )


def _connect(ray: Any, address: str | None) -> None:
    # ray.init replaces the SIGTERM handler (a stack dump, exit 1): keep the caller's, so that
    # SIGTERM unwinds like Ctrl-C (the tasks cancelled, a local Ray stopped)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            # "local": a new Ray of this machine, even if another one runs here
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (OSError, ValueError, RuntimeError) as err:  # unreachable, or no ray[client]
        where = "start a local Ray" if address is None else f"connect to --address {address}"
        raise InputError(f"Cannot {where}: {err}") from None
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _fit_task(
    config: MegFitConfig,
    fit: Fit,
    allow_unfinished: bool,
    options_given: Collection[str] | None,
    threads: int,
) -> str | None:
    """One participant on a Ray worker: None once its run finished, or a refusal's message.

    Always resumes: the driver refused existing runs unless resuming, so a checkpoint here is
    this participant's, begun by the user's earlier run or by a failed attempt of this task.
    """
    # torch's CPU results can depend on the thread count: as many threads as CPUs reserved
    torch.set_num_threads(threads)
    try:
        fit_participant(
            config,
            fit,
            resume=True,
            allow_unfinished=allow_unfinished,
            verbose=False,
            options_given=options_given,
        )
    except InputError as err:  # bad input fails the same way every time: not retried
        return _one_line(err)
    return None


def _one_line(err: BaseException, limit: int = 400) -> str:
    cause = getattr(err, "cause", None) or err  # a RayTaskError wraps the task's exception
    line = " ".join(f"{type(cause).__name__}: {cause}".split())
    # Ray's system errors carry whole tracebacks
    return line if len(line) <= limit else line[: limit - 3] + "..."
