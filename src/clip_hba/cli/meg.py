"""``clip-hba meg ...`` and ``clip-hba simulate meg``: thin commands over the MEG API.

`meg_app` and `simulate_app` are added to the main app by `clip_hba.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from clip_hba._validation import InputError
from clip_hba.cli.options import DataDirOption, emit, split_list
from clip_hba.cli.options import time_window as parse_window
from clip_hba.evaluation.config import TimeRSAConfig
from clip_hba.meg.config import (
    QUALITY_WINDOW_MS,
    BidsEpoching,
    EpochsConfig,
    SimulationConfig,
)

meg_app = typer.Typer(
    help="MEG RDM stores: import, inspect, export, and time-resolved RSA.", no_args_is_help=True
)
simulate_app = typer.Typer(help="Simulated data for tests and demos.", no_args_is_help=True)

EPOCHS = EpochsConfig()
BIDS = BidsEpoching()
SIMULATION = SimulationConfig()
RSA = TimeRSAConfig()
QUALITY_WINDOW = ",".join(f"{v:g}" for v in QUALITY_WINDOW_MS)  # "0,1000"

Format = Literal["auto", "things-mat", "npy", "mne", "bids"]
DtypeOption = Annotated[
    Literal["float32", "float16"], typer.Option(help="Storage type of the dissimilarities.")
]
ForceOption = Annotated[bool, typer.Option(help="Overwrite an existing output file.")]
ExportForceOption = Annotated[
    bool, typer.Option(help="Overwrite an existing exported file and its .json sidecar.")
]


@meg_app.command("import")
def import_command(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="The release .mat file, a .npy array, one -epo.fif file per participant, or "
            "a BIDS root folder."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The store to write (.h5).")],
    format: Annotated[
        Format,
        typer.Option(
            "--format",
            help="things-mat: THINGS-MEG release (MATLAB v7.3, (P, T, N, N) in h5py); npy: "
            "(P, T, N, N), (T, N, N) or condensed (P, T, pairs)/(T, pairs); mne: -epo.fif "
            "files; bids: an MEG BIDS dataset. auto: from the file name.",
        ),
    ] = "auto",
    variable: Annotated[
        str | None,
        typer.Option(help="things-mat: the variable name (default: the sidecar's, else mat)."),
    ] = None,
    concept_ids: Annotated[
        Path | None,
        typer.Option(
            help="things-mat/npy: file with the concept id of each row, one per line (default: "
            "a sidecar X.json beside X.npy/X.mat, else for things-mat the 1,854 THINGS "
            "concepts in official order)."
        ),
    ] = None,
    participant_ids: Annotated[
        str | None,
        typer.Option(help="Comma-separated participant ids (default P1, P2, ... or sub-*)."),
    ] = None,
    times: Annotated[
        str | None,
        typer.Option(
            help="Time axis as START:STEP in ms, e.g. -100:5 (things-mat default -100:5; npy: "
            "required unless in the sidecar)."
        ),
    ] = None,
    asymmetric: Annotated[
        Literal["average", "upper", "lower"] | None,
        typer.Option(
            help="things-mat/npy: a square RDM whose two triangles differ is refused unless "
            "this says how to condense it: the mean of both, or the upper or the lower "
            "triangle (a pair filled in one triangle only always takes that value)."
        ),
    ] = None,
    inf_as_nan: Annotated[
        bool,
        typer.Option(
            help="things-mat/npy: store infinite values as missing pairs (NaN; `meg info` "
            "counts them as n_inf_as_nan) instead of refusing the data."
        ),
    ] = False,
    method: Annotated[
        Literal["correlation", "decoding", "crossnobis"],
        typer.Option(
            help="mne/bids: 1 - Pearson between condition-mean sensor patterns; "
            "cross-validated pairwise accuracy (%) of shrinkage LDA, one pooled covariance "
            "per fold; or crossnobis, the cross-validated Mahalanobis distance with the "
            "training folds' shrunk noise covariance (as rsatoolbox)."
        ),
    ] = EPOCHS.method,
    concept_column: Annotated[
        str | None,
        typer.Option(
            help="mne: epochs metadata column with the concept id (default: event names)."
        ),
    ] = None,
    fold_column: Annotated[
        str | None,
        typer.Option(
            help="mne: metadata column with the session/run, for decoding/crossnobis folds."
        ),
    ] = None,
    n_splits: Annotated[
        int, typer.Option(min=2, help="Decoding/crossnobis folds when there is no fold column.")
    ] = EPOCHS.n_splits,
    shrinkage: Annotated[
        str,
        typer.Option(
            help="Decoding/crossnobis covariance shrinkage: 'auto' (Ledoit-Wolf toward the "
            "diagonal) or a number in [0, 1] (toward a multiple of the identity)."
        ),
    ] = str(EPOCHS.shrinkage),
    bin_ms: Annotated[
        float | None,
        typer.Option(
            help="Average consecutive timepoints into bins of this width (ms), a whole "
            "multiple of the sampling step; the time axis becomes the bins' mean times "
            "(e.g. 5 for 1 ms data). Every format."
        ),
    ] = EPOCHS.bin_ms,
    subjects: Annotated[
        str | None, typer.Option(help="bids: comma-separated subjects (default all).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="bids: the task entity.")] = BIDS.task,
    event_column: Annotated[
        str, typer.Option(help="bids: events.tsv column naming the concept.")
    ] = BIDS.event_column,
    concept_pattern: Annotated[
        str | None,
        typer.Option(
            help="bids: regex applied to that column; group 1 (or the match) is the concept "
            "id, and rows that do not match are skipped."
        ),
    ] = BIDS.concept_pattern,
    tmin: Annotated[float, typer.Option(help="bids: epoch start (s).")] = BIDS.tmin_s,
    tmax: Annotated[float, typer.Option(help="bids: epoch end (s).")] = BIDS.tmax_s,
    decim: Annotated[int, typer.Option(min=1, help="bids: keep every n-th sample.")] = BIDS.decim,
    seed: Annotated[
        int, typer.Option(min=0, help="Decoding/crossnobis fold shuffling.")
    ] = EPOCHS.seed,
    dtype: DtypeOption = "float32",
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Import MEG RDMs (or MEG epochs, turned into RDMs) into a store, streaming.

    Prints the store's summary (as `meg info`).
    """
    from clip_hba.meg.io import import_rdms
    from clip_hba.meg.store import RDMStore

    path = import_rdms(
        sources,
        out,
        format=format,
        variable=variable,
        concept_ids=concept_ids,
        participant_ids=split_list(participant_ids),
        times_ms=times,
        asymmetry=asymmetric or "raise",
        inf_as_nan=inf_as_nan,
        epochs=EpochsConfig(method, bin_ms, n_splits, seed, _shrinkage(shrinkage)),
        concept_column=concept_column,
        fold_column=fold_column,
        subjects=split_list(subjects),
        epoching=BidsEpoching(
            event_column=event_column,
            concept_pattern=concept_pattern,
            tmin_s=tmin,
            tmax_s=tmax,
            decim=decim,
            task=task,
        ),
        dtype=dtype,
        force=force,
        data_dir=data_dir,
        verbose=not quiet,
    )
    with RDMStore(path) as store:
        emit(store.info())


def _shrinkage(text: str) -> float | str:
    """``--shrinkage``: a number, else the text as given (EpochsConfig names a bad one)."""
    try:
        return float(text)
    except ValueError:
        return text


@meg_app.command("info")
def info_command(
    store: Annotated[Path, typer.Argument(help="An RDM store (.h5).")],
    nan_share: Annotated[
        bool, typer.Option(help="Count the NaN share (reads the whole store).")
    ] = True,
    quality: Annotated[
        bool,
        typer.Option(
            help="Per participant: the mean Pearson r of their RDMs with the mean of the "
            "others over --quality-window, its share of the lower noise ceiling (1 = a typical "
            "participant), and a flag for participants far below the others (reads the window)."
        ),
    ] = True,
    quality_window: Annotated[
        str, typer.Option(help="Times START,STOP in ms (inclusive) of the quality check.")
    ] = QUALITY_WINDOW,
) -> None:
    """Print a JSON summary of a store: participants, concepts, times, NaN share, quality.

    Warns (and lists them under unknown_concepts) when the concept ids mix THINGS ids with
    others.
    """
    from clip_hba.meg.quality import participant_quality
    from clip_hba.meg.store import RDMStore
    from clip_hba.meg.writer import warn_unknown_concepts

    window = parse_window(quality_window, "--quality-window")
    with RDMStore(store) as opened:
        warn_unknown_concepts(opened.concept_ids, str(store))
        summary = opened.info(nan_share=nan_share)
        times = opened.times_ms
        if quality and not ((times >= window[0]) & (times <= window[1])).any():
            summary["quality"] = {"note": f"no timepoint in the quality window {list(window)} ms"}
        elif quality:
            summary["quality"] = participant_quality(opened, window)
    emit(summary)


@meg_app.command("export")
def export_command(
    store: Annotated[Path, typer.Argument(help="An RDM store (.h5).")],
    out: Annotated[
        Path,
        typer.Option(help="The MATLAB v7.3 file to write (.mat); its sidecar X.json goes beside."),
    ],
    variable: Annotated[str, typer.Option(help="Variable name.")] = "mat",
    lower_nan: Annotated[
        bool, typer.Option(help="NaN in the lower triangle, as in the THINGS-MEG release.")
    ] = True,
    force: ExportForceOption = False,
) -> None:
    """Write a store in the THINGS-MEG release format (variable (N, N, T, P) in MATLAB).

    The sidecar X.json beside X.mat holds the concept ids, participants and time axis, so
    `meg import X.mat` reads the export back without options.
    """
    from clip_hba.meg.writer import export_things_mat, sidecar_path

    export_things_mat(store, out, variable=variable, lower_nan=lower_nan, force=force)
    emit({"out": str(out), "bytes": out.stat().st_size, "sidecar": str(sidecar_path(out))})


@meg_app.command("rsa")
def rsa_command(
    store: Annotated[Path, typer.Option(help="The MEG RDM store (.h5).")],
    embedding: Annotated[
        list[Path],
        typer.Option(
            help="Model embedding file or folder of files (repeatable). Static: any format of "
            "`evaluate behavior`; .npz with a 3-D 'embedding' and 'times_ms' (time-resolved) "
            "or 'layers' (layer-wise, from `embed --layers`); 'spose' for the bundled SPoSE "
            "embedding."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for rsa.json, curves.csv, curves.npz, layer_time_*.npy and plots."
        ),
    ],
    ids: Annotated[
        Path | None,
        typer.Option(help="Concept id of each row of plain (.npy/.txt) embedding files."),
    ] = None,
    method: Annotated[
        Literal["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"],
        typer.Option(help="How model and MEG RDMs are compared at each timepoint."),
    ] = RSA.method,
    model_metric: Annotated[
        Literal["pearson", "cosine", "euclidean"],
        typer.Option(help="Dissimilarity of the model RDMs (1 - Pearson by default)."),
    ] = "pearson",
    time_window: Annotated[
        str | None, typer.Option(help="START,STOP in ms (inclusive); default all times.")
    ] = None,
    participants: Annotated[
        str | None, typer.Option(help="Comma-separated participant ids (default all).")
    ] = None,
    exclude_participants: Annotated[
        str | None, typer.Option(help="Comma-separated participant ids to leave out.")
    ] = None,
    concepts: Annotated[
        str | None,
        typer.Option(
            help="Restrict to these concepts: an ids file (one per line), or 'rdm48' for the "
            "48 concepts held out from behaviour training."
        ),
    ] = None,
    n_permutations: Annotated[
        int,
        typer.Option(
            "--permutations", min=0, help="Concept relabellings for the cluster test (0: none)."
        ),
    ] = RSA.n_permutations,
    threshold_p: Annotated[
        float, typer.Option(help="Cluster-forming threshold: pointwise permutation p-value.")
    ] = RSA.threshold_p,
    alpha: Annotated[float, typer.Option(help="Significance level of the clusters.")] = RSA.alpha,
    baseline: Annotated[
        Literal["zero", "prestimulus"],
        typer.Option(help="Test the curve against 0, or against its own mean before 0 ms."),
    ] = RSA.baseline,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the permutations.")] = RSA.seed,
    plots: Annotated[bool, typer.Option(help="Write the figures.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Time-resolved RSA of model RDMs against MEG RDMs, per participant and for their mean.

    Reports per curve the peak, its latency, the onset (start of the earliest significant
    cluster) and the area after 0 ms, with the noise ceiling, and writes curves and plots.
    Layer-wise embeddings give a layer x time matrix. Prints the summary as JSON.
    """
    from clip_hba.evaluation.time_rsa import resolve_concepts, time_rsa_files

    config = TimeRSAConfig(
        method=method,
        window_ms=parse_window(time_window),
        participants=split_list(participants),
        exclude_participants=split_list(exclude_participants),
        concept_ids=resolve_concepts(concepts, data_dir),
        n_permutations=n_permutations,
        threshold_p=threshold_p,
        alpha=alpha,
        baseline=baseline,
        seed=seed,
    )
    summary = time_rsa_files(
        store,
        embedding,
        out,
        config,
        model_metric=model_metric,
        ids=ids,
        plots=plots,
        data_dir=data_dir,
        verbose=not quiet,
    )
    emit(summary)


@simulate_app.command("meg")
def simulate_meg_command(
    out: Annotated[Path, typer.Option(help="The store to write (.h5).")],
    concepts: Annotated[
        int, typer.Option(min=3, max=1854, help="THINGS concepts (a seeded sample).")
    ] = SIMULATION.n_concepts,
    participants: Annotated[
        int, typer.Option(min=1, help="Simulated participants.")
    ] = SIMULATION.n_participants,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = SIMULATION.seed,
    tmin: Annotated[float, typer.Option(help="First time (ms).")] = SIMULATION.tmin_ms,
    tmax: Annotated[float, typer.Option(help="Last time (ms).")] = SIMULATION.tmax_ms,
    step: Annotated[float, typer.Option(help="Time step (ms).")] = SIMULATION.step_ms,
    signal: Annotated[
        float, typer.Option(min=0.0, help="Scales every component's weight (1 = default mix).")
    ] = SIMULATION.signal,
    noise: Annotated[
        float, typer.Option(help="Noise standard deviation (signal units, finite and > 0).")
    ] = SIMULATION.noise,
    export_mat: Annotated[
        Path | None,
        typer.Option(help="Also write the THINGS-MEG release format (.mat) to this path."),
    ] = None,
    dtype: DtypeOption = "float32",
    force: ForceOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Simulate participants' time-resolved RDMs over THINGS concepts, with known truth.

    Components: early low-level (peak ~100 ms), category (~170 ms), behaviour/SPoSE (~300 ms)
    and a stimulus-specific pattern, with participant-specific latencies, gains and weights;
    no signal before 0 ms. The truth is saved in the store (ground_truth). Prints `meg info`.
    """
    from clip_hba.meg.simulate import simulate_meg
    from clip_hba.meg.store import RDMStore
    from clip_hba.meg.writer import check_out_file, sidecar_path

    check_out_file(out, force)
    if export_mat is not None:
        if Path(export_mat).resolve() == Path(out).resolve():
            raise InputError("--export-mat must be another file than --out (the store).")
        check_out_file(export_mat, force, "sim.mat")
        check_out_file(sidecar_path(export_mat), force, "sim.json")

    config = SimulationConfig(
        n_concepts=concepts,
        n_participants=participants,
        seed=seed,
        tmin_ms=tmin,
        tmax_ms=tmax,
        step_ms=step,
        signal=signal,
        noise=noise,
    )
    simulate_meg(out, config, dtype=dtype, data_dir=data_dir, export_mat=export_mat, force=force)
    with RDMStore(out) as store:
        emit(store.info())
