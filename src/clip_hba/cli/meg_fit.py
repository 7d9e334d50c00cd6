"""``clip-hba fit meg``, ``fit individual`` and ``evaluate meg``: thin commands over the API.

The two fit commands share their training options (`_training_options`, written once); the
defaults come from `MegFitConfig` and `MegModelConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from clip_hba._validation import InputError
from clip_hba.cli.options import (
    AllowRandomInitOption,
    AllowUnfinishedOption,
    DataDirOption,
    DeviceOption,
    DevicesOption,
    PrecisionOption,
    QuietOption,
    defaults,
    emit,
    int_tuple,
    joined,
    options_given,
    path_or_none,
    split_list,
    time_window,
    with_options,
)
from clip_hba.evaluation.config import SPECIFICITY_WINDOW_MS, TimeRSAConfig
from clip_hba.models.config import AdapterConfig, InputConfig, MegModelConfig
from clip_hba.training.config import INDIVIDUAL_RANK, MegFitConfig

MEG = defaults(MegFitConfig)
MEG_MODEL = MegModelConfig()
RSA = TimeRSAConfig()
SPECIFICITY_WINDOW = joined(SPECIFICITY_WINDOW_MS)  # "0,1000"
LOSS_WEIGHTS = joined(MEG.loss_weights)  # "1,0.1,0.15"
ADAPTER_LAYERS = joined(MEG.adapter.layers)  # "": every block

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
        min=1,
        help="Each stage stops after this many epochs without a better one (a higher "
        "validation RSA and a validation loss no higher).",
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
    str,
    typer.Option(
        help="Blocks with DoRA adapters, comma-separated, numbered from 1 as in every output "
        "(block_1 = the first block; -1 = the last); '' = every block."
    ),
]
AlphaOption = Annotated[float, typer.Option(help="Adapter alpha (update scaled by alpha/rank).")]
MaxConceptsOption = Annotated[
    int | None, typer.Option(min=10, help="Use only this many of the store's concepts.")
]
BudgetOption = Annotated[
    float | None,
    typer.Option(
        "--time-budget",
        help="A safety stop after this many seconds of training (best epoch kept); results then "
        "depend on the machine's speed (metrics.json says stopped_by_time_budget).",
    ),
]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out where it stopped.")]
RdmCorrelationOption = Annotated[
    Literal["flat", "per-time"],
    typer.Option(
        help="RDM term of the loss: 1 - one Pearson r over every timepoint and pair together "
        "(flat, the reference's: the model must also match how distinct the RDMs are at each "
        "moment) or the mean over timepoints of 1 - r (per-time)."
    ),
]
TgTermOption = Annotated[
    Literal["row-mean", "matrix"],
    typer.Option(
        help="Temporal-generalisation term: 1 - r between the row means of the two "
        "timepoint x timepoint matrices (row-mean, the reference's) or their upper triangles."
    ),
]
LayerFeaturesOption = Annotated[
    Literal["raw", "normed"],
    typer.Option(
        help="Each block's feature: its pooled token x projection without the tower's final "
        "norm (raw, the reference's) or through it (normed). Same for towers without one."
    ),
]
GatingOption = Annotated[
    Literal["richness", "none"],
    typer.Option(
        help="richness: model RDMs are scaled per timepoint by the training targets' mean "
        "dissimilarity (min-max scaled, zero before 0 ms: no structure before onset); none."
    ),
]
FreezeMagnitudeOption = Annotated[
    bool,
    typer.Option(
        "--freeze-magnitude/--train-magnitude",
        help="Stage 1: keep the DoRA magnitudes fixed, only the directions train "
        "(the reference's).",
    ),
]
WeightDecayOption = Annotated[float, typer.Option(help="AdamW weight decay (>= 0).")]
ConfidenceOption = Annotated[
    float,
    typer.Option(
        help="An epoch beats the best only if its higher validation RSA holds in at least this "
        "share of 200 paired bootstrap resamples of the validation concepts (0: any rise, "
        "the reference's rule)."
    ),
]


def _training_options(
    store: StoreOption,
    model: MegModelOption,
    images: MegImagesOption = None,
    time_window: TimeWindowOption = None,
    stage0_lr: Stage0LrOption = MEG.stage0_lr,
    stage1_lr: Stage1LrOption = MEG.stage1_lr,
    stage0_epochs: Stage0EpochsOption = MEG.stage0_epochs,
    stage1_epochs: Stage1EpochsOption = MEG.stage1_epochs,
    patience: PatienceOption = MEG.patience,
    batch_size: MegBatchOption = MEG.batch_size,
    window: WindowOption = MEG_MODEL.window,
    no_noise: NoNoiseOption = not MEG_MODEL.noise,
    dimension_gains: DimensionGainsOption = MEG_MODEL.dimension_gains,
    loss_weights: LossWeightsOption = LOSS_WEIGHTS,
    rdm_correlation: RdmCorrelationOption = MEG.rdm_correlation,
    tg_term: TgTermOption = MEG.tg_term,
    layer_features: LayerFeaturesOption = MEG_MODEL.layer_features,
    gating: GatingOption = MEG_MODEL.gating,
    freeze_magnitude: FreezeMagnitudeOption = MEG.freeze_magnitude,
    weight_decay: WeightDecayOption = MEG.weight_decay,
    improvement_confidence: ConfidenceOption = MEG.improvement_confidence,
    alpha: AlphaOption = MEG.adapter.alpha,
    layers: LayersOption = ADAPTER_LAYERS,
    seed: MegSeedOption = MEG.seed,
    val_fraction: ValFractionOption = MEG.val_fraction,
    test_fraction: TestFractionOption = MEG.test_fraction,
    max_concepts: MaxConceptsOption = MEG.max_concepts,
    time_budget: BudgetOption = MEG.time_budget_s,
    resume: ResumeOption = False,
    device: DeviceOption = MEG.device,
    precision: PrecisionOption = MEG.precision,
    devices: DevicesOption = MEG.devices,
    data_dir: DataDirOption = None,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_random_init: AllowRandomInitOption = MEG.allow_random_init,
    quiet: QuietOption = False,
) -> None:
    """The options of `fit meg` and `fit individual` (a signature only: see `with_options`)."""


def _meg_config(options: dict[str, Any], **own: Any) -> MegFitConfig:
    """A `MegFitConfig` from the shared training options and a command's own settings."""
    return MegFitConfig(
        store=str(options["store"]),
        model=options["model"],
        inputs=InputConfig(images=path_or_none(options["images"])),
        time_window=time_window(options["time_window"]),
        meg=MegModelConfig(
            window=options["window"],
            noise=not options["no_noise"],
            dimension_gains=options["dimension_gains"],
            layer_features=options["layer_features"],
            gating=options["gating"],
        ),
        loss_weights=_loss_weights(options["loss_weights"]),
        rdm_correlation=options["rdm_correlation"],
        tg_term=options["tg_term"],
        freeze_magnitude=options["freeze_magnitude"],
        weight_decay=options["weight_decay"],
        improvement_confidence=options["improvement_confidence"],
        adapter=AdapterConfig(
            rank=own.pop("rank"),
            alpha=options["alpha"],
            layers=int_tuple("layers", options["layers"]),
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
        precision=options["precision"],
        devices=options["devices"],
        data_dir=path_or_none(options["data_dir"]),
        allow_random_init=options["allow_random_init"],
        **own,
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


def fit_meg_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/meg"),
    init_behavior: Annotated[
        Path | None,
        typer.Option(help="A CLIP-HBA-Behavior run to start from; its label embeddings are used."),
    ] = None,
    init: Annotated[
        Literal["behavior", "base"],
        typer.Option(
            help="With --init-behavior: the concept tower starts as the behaviour model's "
            "(behavior) or as the base model's (base, the reference's)."
        ),
    ] = MEG.init,
    participants: Annotated[
        str | None, typer.Option(help="Comma-separated participants to average (default all).")
    ] = None,
    exclude_participants: Annotated[
        str | None, typer.Option(help="Comma-separated participants to leave out.")
    ] = None,
    rank: Annotated[int, typer.Option(min=1, help="DoRA rank.")] = MEG.adapter.rank,
    **options: Any,
) -> None:
    """Fit CLIP-HBA-MEG to the participants' mean MEG RDMs (group model).

    Stage 0 trains the layer weights W on cached features of the frozen backbone; stage 1 adds
    DoRA adapters to every block. An epoch is kept only if it raises the validation RSA without
    raising the validation loss, so the run never ends below its start. Prints metrics.json.
    """
    from clip_hba.training.meg import fit_meg
    from clip_hba.training.runs import RunDir

    config = _meg_config(
        options,
        out=str(out),
        rank=rank,
        init_behavior=path_or_none(init_behavior),
        init=init,
        participants=split_list(participants),
        exclude_participants=split_list(exclude_participants),
    )
    result = fit_meg(
        config,
        resume=options["resume"],
        allow_unfinished=options["allow_unfinished"],
        verbose=not options["quiet"],
        options_given=options_given(ctx) if options["resume"] else None,
    )
    emit(RunDir(result.run_dir).read_metrics())


def fit_individual_command(
    ctx: typer.Context,
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
    rank: Annotated[int, typer.Option(min=1, help="DoRA rank.")] = INDIVIDUAL_RANK,
    backend: Annotated[
        Literal["sequential", "ray"],
        typer.Option(
            help="sequential (default): one participant after another here; ray: one Ray task "
            "per participant (pip install 'clip-hba\\[ray]')."
        ),
    ] = "sequential",
    address: Annotated[
        str | None,
        typer.Option(
            help="--backend ray: the cluster, e.g. ray://HOST:10001 (default: a local Ray, "
            "started and stopped by this command)."
        ),
    ] = None,
    cpus_per_task: Annotated[
        float,
        typer.Option(
            help="--backend ray: CPUs per participant's task (default 1; as many torch threads)."
        ),
    ] = 1,
    gpus_per_task: Annotated[
        float, typer.Option(help="--backend ray: GPUs per participant's task (default 0).")
    ] = 0,
    max_retries: Annotated[
        int,
        typer.Option(
            help="--backend ray: retries of a failed participant, each continuing its "
            "checkpoint (default 2); then it is reported and the others go on."
        ),
    ] = 2,
    **options: Any,
) -> None:
    """Fit individualized CLIP-HBA-MEG models: one participant's MEG RDMs each.

    Writes OUT/<participant>/ per participant (one after another with --participant all, or
    one Ray task each with --backend ray) and prints each run's metrics.json.
    """
    from clip_hba.training.individual import fit_individuals
    from clip_hba.training.runs import RunDir

    template = _meg_config(options, out=str(out), rank=rank)
    results = fit_individuals(
        template,
        participant,
        out,
        init=init,
        group_run=group_run,
        init_behavior=init_behavior,
        resume=options["resume"],
        allow_unfinished=options["allow_unfinished"],
        verbose=not options["quiet"],
        options_given=options_given(ctx) if options["resume"] else None,
        backend=backend,
        address=address,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        max_retries=max_retries,
    )
    emit({person: RunDir(r.run_dir).read_metrics() for person, r in results.items()})


with_options(fit_meg_command, _training_options)
with_options(fit_individual_command, _training_options)


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
        int,
        typer.Option(
            "--permutations",
            min=0,
            help="Permutations of the cluster tests; for a folder of personal runs, of the "
            "specificity and second-order tests (exact when P! is at most this; 0: 10,000).",
        ),
    ] = RSA.n_permutations,
    window: Annotated[
        str, typer.Option(help="Specificity: time window START,STOP in ms.")
    ] = SPECIFICITY_WINDOW,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the permutations.")] = RSA.seed,
    images: Annotated[
        Path | None,
        typer.Option(help="Concept images, instead of the image folder the runs were trained on."),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    allow_unfinished: AllowUnfinishedOption = False,
    quiet: QuietOption = False,
) -> None:
    """Evaluate CLIP-HBA-MEG on held-out concepts, or the specificity of personal models.

    A run: time-resolved RSA of the MEG model, the base model and the behaviour model it started
    from, the learned W beside the base model's layer x time RSA, and behavioural alignment per
    timepoint. A folder of individualized runs: S[i, j] = mean RSA (over --window) of
    participant i's model with participant j's held-out MEG, diagonal minus off-diagonal and a
    permutation p-value. Prints the JSON summary.
    """
    from clip_hba.pipelines.meg import evaluate_meg

    summary = evaluate_meg(
        model,
        store,
        out,
        n_permutations=n_permutations,
        window_ms=time_window(window, "--window"),
        seed=seed,
        device=device,
        images=images,
        allow_unfinished=allow_unfinished,
        verbose=not quiet,
        precision=precision,
    )
    emit(summary)
