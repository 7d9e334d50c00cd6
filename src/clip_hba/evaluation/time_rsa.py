"""Time-resolved RSA: how well model RDMs match MEG RDMs at every timepoint.

Model RDMs come as `ModelRDMs`: static (one RDM), time-resolved (one per MEG timepoint) or
layer-wise (one per network block: the layer x time matrix). `time_resolved_rsa` streams the
store once, in batches of timepoints, and computes for every model RDM the correlation with each
participant's MEG RDM and with the participants' mean at every timepoint -- vectorised over
timepoints and pairs -- plus the noise ceiling and, for every curve, a cluster-based permutation
test over time in which the model's concepts are relabelled (the same relabelling at every
timepoint, so the temporal structure of the null is kept).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_hba._io import check_output_dir, read_ids
from clip_hba._validation import InputError
from clip_hba.data.things import load_concepts, load_rdm48
from clip_hba.evaluation.config import TimeRSAConfig
from clip_hba.evaluation.model_rdms import ModelRDMs, load_model_rdms
from clip_hba.evaluation.rsa_nulls import DeferredNulls, Permutations
from clip_hba.evaluation.time_rsa_result import TimeRSAResult, save_time_rsa
from clip_hba.meg.quality import leave_one_out_correlations
from clip_hba.meg.store import RDMStore
from clip_hba.rsa.comparisons import correlate, correlate_rowwise, standardize
from clip_hba.rsa.methods import Metric
from clip_hba.rsa.rdms import mean_rdm
from clip_hba.rsa.stats import Cluster, cluster_permutation_test

__all__ = ["resolve_concepts", "time_resolved_rsa", "time_rsa_files"]

RSA_READ_BYTES = 128 << 20  # MEG read per sub-block of timepoints


def time_resolved_rsa(
    store: RDMStore | str | os.PathLike,
    models: Sequence[ModelRDMs],
    config: TimeRSAConfig | None = None,
    verbose: bool = True,
    *,
    fast: bool = True,
) -> TimeRSAResult:
    """Correlate model RDMs with a store's MEG RDMs at every timepoint; see the module docstring.

    Parameters
    ----------
    store : RDMStore or path
    models : sequence of ModelRDMs
        Compared over the concepts they share with the store (and ``config.concept_ids``).
    config : TimeRSAConfig, optional
    verbose : bool
        Show a progress bar.
    fast : bool
        Where neither model nor MEG misses a pair, standardise each model once and gather its
        permutations (the default); False computes every permuted correlation directly (the
        same curves; nulls equal to float32 rounding; slower: for checks).

    Returns
    -------
    TimeRSAResult
    """
    config = config or TimeRSAConfig()
    if not models:
        raise InputError("Give at least one model (embedding) to compare with the MEG.")
    names = [n for m in models for n in m.curve_names()]
    model_names = [m.name for m in models]
    if len(set(names)) != len(names) or len(set(model_names)) != len(model_names):
        raise InputError(f"Model names repeat: {sorted(names)}; rename the files.")
    own = isinstance(store, str | os.PathLike)
    store = RDMStore(store) if own else store
    try:
        return _run(store, list(models), config, verbose, fast)
    finally:
        if own:
            store.close()


def _run(
    store: RDMStore, models: list[ModelRDMs], config: TimeRSAConfig, verbose: bool, fast: bool
) -> TimeRSAResult:
    concept_ids = _shared_concepts(store, models, config.concept_ids)
    models = [m.select(concept_ids) for m in models]
    times = store.times_ms[store.time_indices(config.window_ms)]
    participants = store.participant_indices(config.participants, config.exclude_participants)
    participant_ids = tuple(store.participant_ids[p] for p in participants)
    for model in models:
        if model.kind == "time" and not (
            len(model.times_ms) == len(times) and np.allclose(model.times_ms, times)
        ):
            raise InputError(
                f"Model {model.name!r} has {len(model.times_ms)} timepoints "
                f"({model.times_ms[0]:g}..{model.times_ms[-1]:g} ms) but the MEG window has "
                f"{len(times)} ({times[0]:g}..{times[-1]:g} ms); use --time-window to match."
            )
    if config.baseline == "prestimulus" and not (times < 0).any():
        raise InputError("A pre-stimulus baseline needs timepoints before 0 ms in the window.")
    n_p, n_t = len(participant_ids), len(times)
    most_rows = (
        max(len(m.values) for m in models if m.kind != "time")
        if any(m.kind != "time" for m in models)
        else 1
    )
    permutations = Permutations(len(concept_ids), config.n_permutations, config.seed, most_rows)
    targets = ["group", *participant_ids]
    curves = {
        name: np.full((len(targets), n_t), np.nan) for m in models for name in m.curve_names()
    }
    nulls = {
        name: np.full((len(targets), config.n_permutations, n_t), np.nan, dtype=np.float32)
        for name in curves
    }
    ceiling = {"lower": np.full((n_p, n_t), np.nan), "upper": np.full((n_p, n_t), np.nan)}
    n_pairs = len(concept_ids) * (len(concept_ids) - 1) // 2
    step = max(1, RSA_READ_BYTES // (4 * n_p * n_pairs))
    blocks = store.iter_times(
        config.window_ms, concept_ids, list(participant_ids), batch_bytes=4 * n_p * n_pairs * step
    )
    standardized = (
        {m.name: standardize(m.values, config.method) for m in models if _fast_model(m, config)}
        if fast
        else {}
    )
    deferred = _deferred_nulls(models, standardized, len(targets), n_pairs, n_t, step, permutations)
    offset = 0
    bar = tqdm(total=n_t, desc="Time-resolved RSA", unit="time", disable=not verbose)
    with bar:
        for time_rows, block in blocks:
            span = slice(offset, offset + len(time_rows))
            rows = _Targets(mean_rdm(block), block, config.method, fast)
            _block_noise_ceiling(block, rows, ceiling, span)
            for model in models:
                _block_model(model, rows, span, config, permutations, curves, nulls, standardized)
            if deferred is not None:
                if deferred.room() < len(time_rows):
                    deferred.flush(nulls)
                deferred.add(rows.standardized(), rows.complete)
            offset += len(time_rows)
            bar.update(len(time_rows))
        if deferred is not None:
            deferred.flush(nulls)
    clusters = _clusters(curves, nulls, times, targets, config)
    result = TimeRSAResult(
        times_ms=times,
        concept_ids=tuple(concept_ids),
        participant_ids=participant_ids,
        group={name: values[0] for name, values in curves.items()},
        participants={name: values[1:] for name, values in curves.items()},
        noise_ceiling={
            bound: (np.nanmean(v, 0) if n_p > 1 else np.full(n_t, np.nan))
            for bound, v in ceiling.items()
        },
        clusters=clusters,
        config=config,
    )
    for model in models:
        if model.kind == "layers":
            result.layer_time[model.name] = np.stack(
                [result.group[name] for name in model.curve_names()]
            )
            result.layer_labels[model.name] = model.labels
    return result


def _shared_concepts(
    store: RDMStore, models: list[ModelRDMs], restrict: Sequence[str] | None
) -> list[str]:
    shared = set(store.concept_ids)
    for model in models:
        overlap = shared & set(model.concept_ids)
        if len(overlap) < 3:
            raise InputError(
                f"Model {model.name!r} shares {len(overlap)} concept(s) with the MEG store "
                f"({len(model.concept_ids)} in the model, {len(store.concept_ids)} in the store); "
                "at least 3 are needed."
            )
        shared = overlap
    if restrict is not None:
        restricted = shared & set(restrict)
        if len(restricted) < 3:
            raise InputError(
                f"Only {len(restricted)} of the {len(set(restrict))} selected concepts are in "
                "both the store and every model; at least 3 are needed."
            )
        shared = restricted
    return [c for c in store.concept_ids if c in shared]


class _Targets:
    """One block's MEG rows: the participants' mean, then every participant, (Tb, n_pairs) each.

    The targets without missing pairs are standardised (ranked, centred, scaled) once, when
    first needed, and shared by every model's curves, its permutations and the noise ceiling.
    """

    def __init__(self, mean: np.ndarray, block: np.ndarray, method: str, fast: bool) -> None:
        self.rows = [mean, *block]
        self.block = block
        self.method = method
        fast = fast and method != "kendall_tau_a"
        self.complete = [t for t, meg in enumerate(self.rows) if fast and not np.isnan(meg).any()]
        self._standardized: np.ndarray | None = None

    def standardized(self) -> np.ndarray:
        """The complete targets standardised, shape (len(complete), Tb, n_pairs), float64."""
        if self._standardized is None:
            z = np.empty((len(self.complete), *self.rows[0].shape), dtype=np.float64)
            if len(self.complete) == len(self.rows):  # the participants in one call: one pool
                standardize(self.rows[0], self.method, out=z[0])
                n_pairs = self.block.shape[-1]
                rows = self.block.reshape(-1, n_pairs)
                standardize(rows, self.method, out=z[1:].reshape(-1, n_pairs))
            else:
                for k, t in enumerate(self.complete):
                    standardize(self.rows[t], self.method, out=z[k])
            self._standardized = z
        return self._standardized


def _block_model(
    model: ModelRDMs,
    targets: _Targets,
    span: slice,
    config: TimeRSAConfig,
    permutations: Permutations,
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    standardized: dict[str, np.ndarray],
) -> None:
    """Fill this block's timepoints of the model's curves (and null curves) for every target.

    Without missing pairs, relabelling the concepts only reorders the model's ranks, so the
    model is standardised (ranked, centred, scaled) once (``standardized``, by name) and each
    permutation is a gather (for static and layer models, deferred to `DeferredNulls`);
    otherwise every permuted model is re-ranked over the pairs the MEG holds.
    """
    names = model.curve_names()
    method = config.method
    complete = targets.complete if model.name in standardized else []
    if complete:
        _fast_targets(
            model,
            targets.standardized(),
            complete,
            span,
            permutations,
            curves,
            nulls,
            standardized[model.name],
        )
    for target, meg in enumerate(targets.rows):  # (Tb, n_pairs)
        if target in complete:
            continue
        if model.kind == "time":
            values = model.values[span]
            curves[names[0]][target, span] = correlate_rowwise(meg, values, method)
            for start, chunk in permutations.chunks():
                for k, pairs in enumerate(chunk):
                    nulls[names[0]][target, start + k, span] = correlate_rowwise(
                        meg, values[:, pairs], method
                    )
            continue
        observed = correlate(meg, model.values, method)  # (Tb, M)
        for m, name in enumerate(names):
            curves[name][target, span] = observed[:, m]
        for start, chunk in permutations.chunks():
            permuted = np.concatenate([model.values[:, pairs] for pairs in chunk])  # (k*M, n)
            null = correlate(meg, permuted, method).reshape(len(meg), len(chunk), len(names))
            for m, name in enumerate(names):
                nulls[name][target, start : start + len(chunk), span] = null[:, :, m].T


def _fast_targets(
    model: ModelRDMs,
    z_meg: np.ndarray,
    targets: list[int],
    span: slice,
    permutations: Permutations,
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    z_model: np.ndarray,
) -> None:
    """The complete targets' curves together (and, for time-resolved models, their nulls).

    ``z_meg`` (len(targets), Tb, n_pairs) holds the targets standardised. The nulls of static
    and layer models are left to `DeferredNulls` (many timepoints per permuted model).
    """
    names = model.curve_names()
    n_targets, n_times, n_pairs = z_meg.shape
    if model.kind == "time":
        z_time = z_model[span]
        curves[names[0]][targets, span] = (z_meg * z_time).sum(-1)
        for start, chunk in permutations.chunks():
            for k, pairs in enumerate(chunk):
                # (einsum: no (targets, Tb, n_pairs) product array per permutation)
                permuted = z_time[:, pairs]
                nulls[names[0]][targets, start + k, span] = np.einsum("ktn,tn->kt", z_meg, permuted)
        return
    flat = z_meg.reshape(n_targets * n_times, n_pairs)
    observed = (flat @ z_model.T).reshape(n_targets, n_times, len(names))
    for m, name in enumerate(names):
        curves[name][targets, span] = observed[:, :, m]


def _fast_model(model: ModelRDMs, config: TimeRSAConfig) -> bool:
    """Whether the model is standardised once and its permutations gathered (no re-ranking)."""
    # a row may be wholly undefined (a gated MEG model before 0 ms: no structure); its curve
    # is NaN there, and the rest still takes the fast path
    missing = np.isnan(model.values)
    whole_rows = bool((missing.all(1) | ~missing.any(1)).all())
    return config.method != "kendall_tau_a" and whole_rows


def _deferred_nulls(
    models: list[ModelRDMs],
    standardized: dict[str, np.ndarray],
    n_targets: int,
    n_pairs: int,
    n_times: int,
    step: int,
    permutations: Permutations,
) -> DeferredNulls | None:
    """The block that collects MEG rows for the static and layer models' nulls, if any."""
    waiting = [m for m in models if m.name in standardized and m.kind != "time"]
    if not waiting or not len(permutations):
        return None
    block_times = DeferredNulls.block_times(n_targets, n_pairs, n_times, step)
    deferred = DeferredNulls(n_targets, n_pairs, block_times, permutations)
    for model in waiting:
        deferred.add_model(model.curve_names(), standardized[model.name])
    return deferred


def _block_noise_ceiling(
    block: np.ndarray, targets: _Targets, ceiling: dict[str, np.ndarray], span: slice
) -> None:
    """Each participant against the mean of the others (lower) and of all (upper)."""
    if block.shape[0] < 2:
        return
    # every target complete: the mean's and the participants' standardised rows are reused
    reuse = targets.standardized() if len(targets.complete) == len(targets.rows) else None
    ceiling["lower"][:, span], ceiling["upper"][:, span] = leave_one_out_correlations(
        block, targets.method, standardized=reuse
    )


def _clusters(
    curves: dict[str, np.ndarray],
    nulls: dict[str, np.ndarray],
    times: np.ndarray,
    targets: list[str],
    config: TimeRSAConfig,
) -> dict[str, dict[str, list[Cluster]]]:
    if config.n_permutations == 0:
        return {}
    found: dict[str, dict[str, list[Cluster]]] = {}
    before = times < 0
    for name, values in curves.items():
        found[name] = {}
        for k, target in enumerate(targets):
            observed, null = values[k], nulls[name][k].astype(np.float64)
            if config.baseline == "prestimulus" and np.isfinite(observed[before]).any():
                # (a curve undefined before 0 ms, as a gated MEG model's, is tested against 0)
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN null rows
                    observed = observed - np.nanmean(observed[before])
                    null = null - np.nanmean(null[:, before], axis=1, keepdims=True)
            found[name][target] = cluster_permutation_test(
                observed, null, times, config.threshold_p
            )
    return found


def resolve_concepts(
    concepts: str | os.PathLike | None, data_dir: str | os.PathLike | None = None
) -> list[str] | None:
    """A concept selection: None (all), ``"rdm48"`` (the 48 held-out concepts) or an ids file."""
    if concepts is None:
        return None
    if str(concepts) == "rdm48":
        return list(load_rdm48(data_dir).concept_ids)
    return list(read_ids(concepts))


def time_rsa_files(
    store: str | os.PathLike,
    embeddings: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: TimeRSAConfig,
    *,
    model_metric: Metric = "pearson",
    ids: str | os.PathLike | None = None,
    plots: bool = True,
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """`time_resolved_rsa` of embedding files (or folders of them) against a store.

    Plain embedding files without ids take ``ids`` or, with one row per THINGS concept, the
    official order. Writes ``rsa.json``, curves and plots to ``out``; returns the summary.
    """
    check_output_dir(out)
    official = load_concepts(data_dir).ids
    models = [
        m
        for path in embeddings
        for m in load_model_rdms(path, model_metric, ids, official, data_dir)
    ]
    with RDMStore(store) as opened:
        result = time_resolved_rsa(opened, models, config, verbose=verbose)
    return save_time_rsa(result, out, plots=plots)
