"""``clip-hba meg ...`` and ``clip-hba simulate meg``: thin commands over the MEG API.

`meg_app` and `simulate_app` are added to the main app by `clip_hba.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from clip_hba._validation import InputError

meg_app = typer.Typer(
    help="MEG RDM stores: import, inspect, export, and time-resolved RSA.", no_args_is_help=True
)
simulate_app = typer.Typer(help="Simulated data for tests and demos.", no_args_is_help=True)

Format = Literal["auto", "things-mat", "npy", "mne", "bids"]
DtypeOption = Annotated[
    Literal["float32", "float16"], typer.Option(help="Storage type of the dissimilarities.")
]
ForceOption = Annotated[bool, typer.Option(help="Overwrite an existing output store.")]


def _emit(payload: dict) -> None:
    typer.echo(json.dumps(payload, indent=2))


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        start, stop = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"Invalid value for '--time-window': expected START,STOP in ms, got {text!r}."
        ) from None
    return start, stop


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputError(f"{out} exists; use --force to overwrite it or choose another --out.")


def _guess_format(sources: list[Path]) -> str:
    first = sources[0]
    if first.is_dir():
        return "bids"
    name = first.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".mat"):
        return "things-mat"
    if name.endswith(("-epo.fif", "_epo.fif", "-epo.fif.gz")):
        return "mne"
    raise InputError(f"Cannot tell the format of {first}: give --format.")


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
    variable: Annotated[str, typer.Option(help="things-mat: the variable name.")] = "mat",
    concept_ids: Annotated[
        Path | None,
        typer.Option(
            help="things-mat/npy: file with the concept id of each row, one per line (default: "
            "the 1,854 THINGS concepts in official order; npy: also a sidecar X.json)."
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
    method: Annotated[
        Literal["correlation", "decoding"],
        typer.Option(
            help="mne/bids: 1 - Pearson between condition-mean sensor patterns, or "
            "cross-validated pairwise LDA decoding accuracy (%)."
        ),
    ] = "correlation",
    concept_column: Annotated[
        str | None,
        typer.Option(
            help="mne: epochs metadata column with the concept id (default: event names)."
        ),
    ] = None,
    fold_column: Annotated[
        str | None,
        typer.Option(help="mne: metadata column with the session/run, for decoding folds."),
    ] = None,
    n_splits: Annotated[
        int, typer.Option(min=2, help="Decoding folds when there is no fold column.")
    ] = 5,
    bin_ms: Annotated[
        float | None, typer.Option(help="mne/bids: average samples into bins of this width (ms).")
    ] = None,
    subjects: Annotated[
        str | None, typer.Option(help="bids: comma-separated subjects (default all).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="bids: the task entity.")] = None,
    event_column: Annotated[
        str, typer.Option(help="bids: events.tsv column naming the concept.")
    ] = "trial_type",
    concept_pattern: Annotated[
        str | None,
        typer.Option(
            help="bids: regex applied to that column; group 1 (or the match) is the concept "
            "id, and rows that do not match are skipped."
        ),
    ] = None,
    tmin: Annotated[float, typer.Option(help="bids: epoch start (s).")] = -0.1,
    tmax: Annotated[float, typer.Option(help="bids: epoch end (s).")] = 1.3,
    decim: Annotated[int, typer.Option(min=1, help="bids: keep every n-th sample.")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Decoding fold shuffling.")] = 0,
    n_jobs: Annotated[int, typer.Option(help="Decoding: parallel jobs over pairs.")] = 1,
    dtype: DtypeOption = "float32",
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Import MEG RDMs (or MEG epochs, turned into RDMs) into a store, streaming.

    Prints the store's summary (as `meg info`).
    """
    from clip_hba.meg import RDMStore
    from clip_hba.meg_epochs import BidsEpoching, EpochsConfig, import_bids, import_epochs
    from clip_hba.meg_import import import_npy, import_things_mat

    _check_out(out, force)
    kind = _guess_format(sources) if format == "auto" else format
    participants = _split(participant_ids)
    if kind in ("things-mat", "npy", "bids") and len(sources) != 1:
        raise InputError(f"--format {kind} takes one source, got {len(sources)}.")
    epochs_config = EpochsConfig(method, bin_ms, n_splits, seed, n_jobs)
    verbose = not quiet
    if kind == "things-mat":
        import_things_mat(
            sources[0],
            out,
            variable=variable,
            concept_ids=concept_ids,
            participant_ids=participants,
            times_ms=times,
            dtype=dtype,
            verbose=verbose,
        )
    elif kind == "npy":
        import_npy(
            sources[0],
            out,
            concept_ids=concept_ids,
            participant_ids=participants,
            times_ms=times,
            dtype=dtype,
            verbose=verbose,
        )
    elif kind == "mne":
        import_epochs(
            sources,
            out,
            participant_ids=participants,
            config=epochs_config,
            concept_column=concept_column,
            fold_column=fold_column,
            dtype=dtype,
            verbose=verbose,
        )
    else:
        epoching = BidsEpoching(
            event_column=event_column,
            concept_pattern=concept_pattern,
            tmin_s=tmin,
            tmax_s=tmax,
            decim=decim,
            task=task,
        )
        import_bids(
            sources[0],
            out,
            subjects=_split(subjects),
            epoching=epoching,
            config=epochs_config,
            dtype=dtype,
            verbose=verbose,
        )
    with RDMStore(out) as store:
        _emit(store.info())


@meg_app.command("info")
def info_command(
    store: Annotated[Path, typer.Argument(help="An RDM store (.h5).")],
    nan_share: Annotated[
        bool, typer.Option(help="Count the NaN share (reads the whole store).")
    ] = True,
) -> None:
    """Print a JSON summary of a store: participants, concepts, times, NaN share."""
    from clip_hba.meg import RDMStore

    with RDMStore(store) as opened:
        _emit(opened.info(nan_share=nan_share))


@meg_app.command("export")
def export_command(
    store: Annotated[Path, typer.Argument(help="An RDM store (.h5).")],
    out: Annotated[Path, typer.Option(help="The MATLAB v7.3 file to write (.mat).")],
    variable: Annotated[str, typer.Option(help="Variable name.")] = "mat",
    lower_nan: Annotated[
        bool, typer.Option(help="NaN in the lower triangle, as in the THINGS-MEG release.")
    ] = True,
    force: ForceOption = False,
) -> None:
    """Write a store in the THINGS-MEG release format (variable (N, N, T, P) in MATLAB)."""
    from clip_hba.meg_import import export_things_mat

    _check_out(out, force)
    export_things_mat(store, out, variable=variable, lower_nan=lower_nan)
    _emit({"out": str(out), "bytes": out.stat().st_size})


@meg_app.command("rsa")
def rsa_command(
    store: Annotated[Path, typer.Option(help="The MEG RDM store (.h5).")],
    embedding: Annotated[
        list[Path],
        typer.Option(
            help="Model embedding file or folder of files (repeatable). Static: any format of "
            "`evaluate behavior`; .npz with a 3-D 'embedding' and 'times_ms' (time-resolved) "
            "or 'layers' (layer-wise, from `embed --layers`)."
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
    ] = "spearman",
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
    ] = 1000,
    threshold_p: Annotated[
        float, typer.Option(help="Cluster-forming threshold: pointwise permutation p-value.")
    ] = 0.05,
    alpha: Annotated[float, typer.Option(help="Significance level of the clusters.")] = 0.05,
    baseline: Annotated[
        Literal["zero", "prestimulus"],
        typer.Option(help="Test the curve against 0, or against its own mean before 0 ms."),
    ] = "zero",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the permutations.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write the figures.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Time-resolved RSA of model RDMs against MEG RDMs, per participant and for their mean.

    Reports per curve the peak, its latency, the onset (start of the earliest significant
    cluster) and the area after 0 ms, with the noise ceiling, and writes curves and plots.
    Layer-wise embeddings give a layer x time matrix. Prints the summary as JSON.
    """
    from clip_hba._io import read_ids
    from clip_hba.meg import RDMStore
    from clip_hba.things import load_concepts, load_rdm48
    from clip_hba.time_rsa import (
        TimeRSAConfig,
        load_model_rdms,
        save_time_rsa,
        time_resolved_rsa,
    )

    selected = None
    if concepts == "rdm48":
        selected = list(load_rdm48().concept_ids)
    elif concepts is not None:
        selected = list(read_ids(concepts))
    config = TimeRSAConfig(
        method=method,
        window_ms=_window(time_window),
        participants=_split(participants),
        exclude_participants=_split(exclude_participants),
        concept_ids=selected,
        n_permutations=n_permutations,
        threshold_p=threshold_p,
        alpha=alpha,
        baseline=baseline,
        seed=seed,
    )
    official = load_concepts().ids
    models = [m for path in embedding for m in load_model_rdms(path, model_metric, ids, official)]
    with RDMStore(store) as opened:
        result = time_resolved_rsa(opened, models, config, verbose=not quiet)
    summary = save_time_rsa(result, out, plots=plots)
    _emit(summary)


@simulate_app.command("meg")
def simulate_meg_command(
    out: Annotated[Path, typer.Option(help="The store to write (.h5).")],
    concepts: Annotated[
        int, typer.Option(min=3, max=1854, help="THINGS concepts (a seeded sample).")
    ] = 100,
    participants: Annotated[int, typer.Option(min=1, help="Simulated participants.")] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    tmin: Annotated[float, typer.Option(help="First time (ms).")] = -100.0,
    tmax: Annotated[float, typer.Option(help="Last time (ms).")] = 1300.0,
    step: Annotated[float, typer.Option(help="Time step (ms).")] = 5.0,
    signal: Annotated[
        float, typer.Option(min=0.0, help="Scales every component's weight (1 = default mix).")
    ] = 1.0,
    noise: Annotated[
        float, typer.Option(min=0.0, help="Noise standard deviation (signal units).")
    ] = 3.0,
    export_mat: Annotated[
        Path | None,
        typer.Option(help="Also write the THINGS-MEG release format (.mat) to this path."),
    ] = None,
    dtype: DtypeOption = "float32",
    force: ForceOption = False,
) -> None:
    """Simulate participants' time-resolved RDMs over THINGS concepts, with known truth.

    Components: early low-level (peak ~100 ms), category (~170 ms), behaviour/SPoSE (~300 ms)
    and a stimulus-specific pattern, with participant-specific latencies, gains and weights;
    no signal before 0 ms. The truth is saved in the store (ground_truth). Prints `meg info`.
    """
    from clip_hba.meg import RDMStore
    from clip_hba.meg_import import export_things_mat
    from clip_hba.simulate import SimulationConfig, simulate_meg

    _check_out(out, force)
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
    simulate_meg(out, config, dtype=dtype)
    if export_mat is not None:
        _check_out(export_mat, force)
        export_things_mat(out, export_mat)
    with RDMStore(out) as store:
        _emit(store.info())


# ---------------------------------------------------------------------------- fit / evaluate MEG

StoreOption = Annotated[Path, typer.Option(help="The MEG RDM store (.h5) with the targets.")]
MegModelOption = Annotated[
    str, typer.Option(help="Base model: Hugging Face hub id or local save_pretrained folder.")
]
MegImagesOption = Annotated[
    Path | None,
    typer.Option(
        help="Concept images (THINGS layout or a folder with images.csv); text backbones read "
        "each concept's word and definition instead."
    ),
]
TimeWindowOption = Annotated[
    str | None, typer.Option(help="Target times START,STOP in ms (inclusive); default all.")
]
Stage0LrOption = Annotated[
    float, typer.Option(help="AdamW learning rate of the layer weights W (both stages).")
]
Stage1LrOption = Annotated[
    float, typer.Option(help="AdamW learning rate of the DoRA adapters (stage 1).")
]
Stage0EpochsOption = Annotated[
    int, typer.Option(min=1, help="Stage 0 (W only, cached features): most epochs.")
]
Stage1EpochsOption = Annotated[
    int, typer.Option(min=0, help="Stage 1 (W + DoRA): most epochs (0: skip).")
]
PatienceOption = Annotated[
    int,
    typer.Option(
        min=1, help="Each stage stops after this many epochs without a better validation loss."
    ),
]
MegBatchOption = Annotated[int, typer.Option(min=3, help="Concepts per batch.")]
WindowOption = Annotated[
    int, typer.Option(min=0, help="Smooth W over +- this many timepoints (3 = +-15 ms at 5 ms).")
]
NoNoiseOption = Annotated[bool, typer.Option("--no-noise", help="Train without noise injection.")]
DimensionGainsOption = Annotated[
    bool,
    typer.Option(
        "--dimension-gains",
        help="Also learn one positive gain per output dimension (the 66 SPoSE dimensions), "
        "shared over time: how strongly the participant(s) weigh each dimension.",
    ),
]
LossWeightsOption = Annotated[
    str,
    typer.Option(
        help="Weights RDM,MSE,TG of the loss terms: 1 - r of the RDMs, their MSE, 1 - r of "
        "the temporal-generalisation profiles."
    ),
]
MegSeedOption = Annotated[int, typer.Option(min=0, help="Split, batch order, noise, adapters.")]
ValFractionOption = Annotated[
    float, typer.Option(help="Share of the non-held-out concepts used for validation.")
]
TestFractionOption = Annotated[
    float,
    typer.Option(help="Share of the store's concepts held out (the 48 RDM concepts first)."),
]
LayersOption = Annotated[
    str, typer.Option(help="Blocks with DoRA adapters, comma-separated ('' = every block).")
]
AlphaOption = Annotated[float, typer.Option(help="Adapter alpha (update scaled by alpha/rank).")]
MaxConceptsOption = Annotated[
    int | None, typer.Option(min=10, help="Use only this many of the store's concepts.")
]
BudgetOption = Annotated[
    float | None, typer.Option(help="Stop training after this many seconds (best kept).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out where it stopped.")]
MegDeviceOption = Annotated[
    str, typer.Option(help="Torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]


def _meg_config(options: dict, out: Path, participant: str | None, init_meg: str | None):
    from clip_hba.adapters import AdapterConfig
    from clip_hba.inputs import InputConfig
    from clip_hba.meg_model import MegModelConfig
    from clip_hba.train_meg import MegFitConfig

    layers = options["layers"]
    return MegFitConfig(
        store=str(options["store"]),
        model=options["model"],
        out=str(out),
        inputs=InputConfig(images=None if options["images"] is None else str(options["images"])),
        init_behavior=None if init_meg else _path(options.get("init_behavior")),
        init_meg=init_meg,
        participant=participant,
        participants=_split(options.get("participants")),
        exclude_participants=_split(options.get("exclude_participants")),
        time_window=_window(options["time_window"]),
        meg=MegModelConfig(
            window=options["window"],
            noise=not options["no_noise"],
            dimension_gains=options["dimension_gains"],
        ),
        loss_weights=_loss_weights(options["loss_weights"]),
        adapter=AdapterConfig(
            rank=options["rank"],
            alpha=options["alpha"],
            layers=tuple(int(v) for v in layers.split(",") if v.strip()),
            label_layers=(),
        ),
        stage0_lr=options["stage0_lr"],
        stage1_lr=options["stage1_lr"],
        stage0_epochs=options["stage0_epochs"],
        stage1_epochs=options["stage1_epochs"],
        patience=options["patience"],
        batch_size=options["batch_size"],
        seed=options["seed"],
        val_fraction=options["val_fraction"],
        test_fraction=options["test_fraction"],
        max_concepts=options["max_concepts"],
        time_budget_s=options["time_budget"],
        device=options["device"],
    )


def _loss_weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(
            f"Invalid value for '--loss-weights': expected three numbers RDM,MSE,TG, got {text!r}."
        )
    return values  # type: ignore[return-value]


def _path(value: object) -> str | None:
    return None if value is None else str(value)


def fit_meg_command(
    store: StoreOption,
    model: MegModelOption,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/meg"),
    images: MegImagesOption = None,
    init_behavior: Annotated[
        Path | None,
        typer.Option(help="A CLIP-HBA-Behavior run to start from; its label embeddings are used."),
    ] = None,
    participants: Annotated[
        str | None, typer.Option(help="Comma-separated participants to average (default all).")
    ] = None,
    exclude_participants: Annotated[
        str | None, typer.Option(help="Comma-separated participants to leave out.")
    ] = None,
    time_window: TimeWindowOption = None,
    stage0_lr: Stage0LrOption = 3e-3,
    stage1_lr: Stage1LrOption = 3e-5,
    stage0_epochs: Stage0EpochsOption = 200,
    stage1_epochs: Stage1EpochsOption = 50,
    patience: PatienceOption = 5,
    batch_size: MegBatchOption = 50,
    window: WindowOption = 3,
    no_noise: NoNoiseOption = False,
    dimension_gains: DimensionGainsOption = False,
    loss_weights: LossWeightsOption = "1,0.1,0.15",
    rank: Annotated[int, typer.Option(min=1, help="DoRA rank.")] = 32,
    alpha: AlphaOption = 16.0,
    layers: LayersOption = "",
    seed: MegSeedOption = 0,
    val_fraction: ValFractionOption = 0.2,
    test_fraction: TestFractionOption = 0.2,
    max_concepts: MaxConceptsOption = None,
    time_budget: BudgetOption = None,
    resume: ResumeOption = False,
    device: MegDeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Fit CLIP-HBA-MEG to the participants' mean MEG RDMs (group model).

    Stage 0 trains the layer weights W on cached features of the frozen backbone; stage 1 adds
    DoRA adapters to every block. Prints the run's metrics.json.
    """
    from clip_hba.train_meg import fit_meg

    config = _meg_config(locals(), out, None, None)
    result = fit_meg(config, resume=resume, verbose=not quiet)
    _emit(json.loads((result.run_dir / "metrics.json").read_text()))


def fit_individual_command(
    store: StoreOption,
    model: MegModelOption,
    participant: Annotated[
        str, typer.Option(help="Participant id, or 'all' for one model per participant.")
    ],
    out: Annotated[
        Path, typer.Option(help="Folder of the runs: one sub-folder per participant.")
    ] = Path("runs/individual"),
    init: Annotated[
        Literal["group", "behavior", "base"],
        typer.Option(
            help="Start from the group MEG run (--group-run), a behaviour run "
            "(--init-behavior) or the base model."
        ),
    ] = "group",
    group_run: Annotated[
        Path | None, typer.Option(help="The group MEG run (for --init group).")
    ] = None,
    init_behavior: Annotated[
        Path | None, typer.Option(help="The behaviour run (for --init behavior).")
    ] = None,
    images: MegImagesOption = None,
    time_window: TimeWindowOption = None,
    stage0_lr: Stage0LrOption = 3e-3,
    stage1_lr: Stage1LrOption = 3e-5,
    stage0_epochs: Stage0EpochsOption = 200,
    stage1_epochs: Stage1EpochsOption = 50,
    patience: PatienceOption = 5,
    batch_size: MegBatchOption = 50,
    window: WindowOption = 3,
    no_noise: NoNoiseOption = False,
    dimension_gains: DimensionGainsOption = False,
    loss_weights: LossWeightsOption = "1,0.1,0.15",
    rank: Annotated[int, typer.Option(min=1, help="DoRA rank.")] = 6,
    alpha: AlphaOption = 16.0,
    layers: LayersOption = "",
    seed: MegSeedOption = 0,
    val_fraction: ValFractionOption = 0.2,
    test_fraction: TestFractionOption = 0.2,
    max_concepts: MaxConceptsOption = None,
    time_budget: BudgetOption = None,
    resume: ResumeOption = False,
    device: MegDeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Fit individualized CLIP-HBA-MEG models: one participant's MEG RDMs each.

    Writes OUT/<participant>/ per participant (one after another with --participant all) and
    prints each run's metrics.json.
    """
    from clip_hba.meg import RDMStore
    from clip_hba.train_meg import fit_meg

    if init == "group" and group_run is None:
        raise InputError("--init group needs the group MEG run: give --group-run.")
    if init == "behavior" and init_behavior is None:
        raise InputError("--init behavior needs the behaviour run: give --init-behavior.")
    options = dict(locals())
    if init != "behavior":
        options["init_behavior"] = None
    with RDMStore(store) as opened:
        everyone = list(opened.participant_ids)
    chosen = everyone if participant == "all" else [participant]
    results = {}
    from tqdm.auto import tqdm

    for person in tqdm(chosen, desc="Participants", disable=quiet or len(chosen) == 1):
        config = _meg_config(
            options, out / person, person, _path(group_run) if init == "group" else None
        )
        started = (out / person / "last.safetensors").is_file()  # resume who had begun
        result = fit_meg(config, resume=resume and started, verbose=not quiet)
        results[person] = json.loads((result.run_dir / "metrics.json").read_text())
    _emit(results)


def evaluate_meg_command(
    model: Annotated[
        Path,
        typer.Option(
            help="A MEG run (full evaluation), or a folder of individualized runs (one "
            "sub-folder per participant: the specificity matrix)."
        ),
    ],
    store: StoreOption,
    out: Annotated[Path, typer.Option(help="Folder for the JSON summary and plots.")],
    n_permutations: Annotated[
        int, typer.Option("--permutations", min=0, help="Permutations of the cluster tests.")
    ] = 1000,
    window: Annotated[
        str, typer.Option(help="Specificity: time window START,STOP in ms.")
    ] = "0,1000",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the permutations.")] = 0,
    device: MegDeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Evaluate CLIP-HBA-MEG on held-out concepts, or the specificity of personal models.

    A run: time-resolved RSA of the MEG model, the base model and the behaviour model it started
    from, the learned W beside the base model's layer x time RSA, and behavioural alignment per
    timepoint. A folder of individualized runs: S[i, j] = mean RSA (over --window) of
    participant i's model with participant j's held-out MEG, diagonal minus off-diagonal and a
    permutation p-value. Prints the JSON summary.
    """
    from clip_hba.checkpoints import CONFIG_FILE
    from clip_hba.evaluate_meg import evaluate_meg_run, save_specificity, specificity

    if (model / CONFIG_FILE).is_file():
        _emit(evaluate_meg_run(model, store, out, n_permutations, seed, device, not quiet))
        return
    runs = (
        {sub.name: sub for sub in sorted(model.iterdir()) if (sub / CONFIG_FILE).is_file()}
        if model.is_dir()
        else {}
    )
    if not runs:
        raise InputError(f"{model} is neither a MEG run nor a folder of MEG runs.")
    result = specificity(
        runs,
        store,
        _window(window),
        n_permutations=max(n_permutations, 1),
        seed=seed,
        device=device,
    )
    _emit(save_specificity(result, out))
