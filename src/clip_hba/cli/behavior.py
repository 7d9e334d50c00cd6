"""``clip-hba fit behavior``: CLIP-HBA-Behavior from the command line (defaults from the
config dataclasses)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from clip_hba.cli.options import (
    AllowRandomInitOption,
    DataDirOption,
    DeviceOption,
    DevicesOption,
    ExemplarOption,
    ImagesCsvOption,
    ImagesOption,
    NormalizationOption,
    PrecisionOption,
    QuietOption,
    SkipMissingOption,
    defaults,
    emit,
    int_tuple,
    joined,
    options_given,
    path_or_none,
)
from clip_hba.models.config import AdapterConfig, HeadConfig, InputConfig
from clip_hba.training.config import BehaviorFitConfig

BEHAVIOR = defaults(BehaviorFitConfig)
INPUTS = InputConfig()
ADAPTER = AdapterConfig()
HEAD = HeadConfig()
LAYERS = joined(ADAPTER.layers)  # "-2,-1"
TEXT_LAYERS = joined(ADAPTER.label_layers)  # "-1"
SeedOption = Annotated[
    int, typer.Option(min=0, help="Seed of the split, the adapters' start and the batch order.")
]


def fit_behavior_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option(help="Base model: Hugging Face hub id or local save_pretrained folder.")
    ] = "openai/clip-vit-large-patch14",
    out: Annotated[
        Path, typer.Option(help="Run directory (config, weights, log, metrics).")
    ] = Path("runs/behavior"),
    images: ImagesOption = None,
    images_csv: ImagesCsvOption = None,
    exemplar: ExemplarOption = INPUTS.exemplar,
    normalization: NormalizationOption = INPUTS.normalization,
    skip_missing: SkipMissingOption = INPUTS.skip_missing,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum number of epochs.")] = BEHAVIOR.epochs,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training samples per batch: concepts, or images with --exemplar all "
            "(evaluation batches do not change results).",
        ),
    ] = BEHAVIOR.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = BEHAVIOR.lr,
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay (>= 0).")
    ] = BEHAVIOR.weight_decay,
    patience: Annotated[
        int,
        typer.Option(min=1, help="Stop after this many epochs without a lower validation loss."),
    ] = BEHAVIOR.patience,
    seed: SeedOption = BEHAVIOR.seed,
    val_fraction: Annotated[
        float, typer.Option(help="Share of the 1,806 non-held-out concepts used for validation.")
    ] = BEHAVIOR.val_fraction,
    rank: Annotated[int, typer.Option(min=1, help="Adapter rank.")] = ADAPTER.rank,
    alpha: Annotated[
        float, typer.Option(help="Adapter alpha (update scaled by alpha/rank).")
    ] = ADAPTER.alpha,
    layers: Annotated[
        str,
        typer.Option(
            help="Blocks of the concept (vision) tower with adapters, comma-separated, numbered "
            "from 1 as in every output (block_1 = the first block); negative = from the end "
            "(-1 = the last)."
        ),
    ] = LAYERS,
    text_layers: Annotated[
        str,
        typer.Option(
            help="Blocks of CLIP's text tower with adapters, numbered as --layers ('' = frozen "
            "text tower)."
        ),
    ] = TEXT_LAYERS,
    modules: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated module names inside a block to adapt (default: the attention "
            "output projection, out_proj for CLIP)."
        ),
    ] = None,
    dora: Annotated[
        bool, typer.Option(help="DoRA (on) or plain LoRA (--no-dora).")
    ] = ADAPTER.use_dora,
    adapter_dropout: Annotated[
        float,
        typer.Option(help="Dropout on the adapters' input while training (needs --train-dropout)."),
    ] = ADAPTER.dropout,
    text_template: Annotated[
        str,
        typer.Option(help="Text backbones: the text of a concept, from {word} and {definition}."),
    ] = INPUTS.text_template,
    max_text_tokens: Annotated[
        int, typer.Option(min=4, help="Text backbones: longest concept text in tokens.")
    ] = INPUTS.max_text_tokens,
    head: Annotated[
        Literal["prompt_cosine", "linear"],
        typer.Option(
            help="prompt_cosine: logit_scale x cos(features, label prompt); linear: a linear map."
        ),
    ] = HEAD.kind,
    template: Annotated[
        str, typer.Option(help="Prompt of a dimension label; must contain {label}.")
    ] = HEAD.template,
    logit_scale: Annotated[
        float, typer.Option(help="Scale of the prompt-cosine head.")
    ] = HEAD.logit_scale,
    cache: Annotated[
        Literal["auto", "memory", "disk", "off"],
        typer.Option(
            help="Frozen-prefix cache: auto = memory up to 4 GiB, else disk; off = run every block."
        ),
    ] = BEHAVIOR.cache,
    lr_schedule: Annotated[
        Literal["constant", "cosine"],
        typer.Option(help="Learning rate per epoch: constant, or cosine decay to 0 over --epochs."),
    ] = BEHAVIOR.lr_schedule,
    train_dropout: Annotated[
        bool,
        typer.Option(help="Use the backbone's dropout in the trained blocks while training."),
    ] = BEHAVIOR.train_dropout,
    max_concepts: Annotated[
        int | None,
        typer.Option(min=4, help="Use only this many train+validation concepts (quick runs)."),
    ] = BEHAVIOR.max_concepts,
    augment: Annotated[
        Literal["none", "standard"],
        typer.Option(
            help="Training images: as they are, or 'standard' (seeded random resized crop, "
            "horizontal flip, mild colour jitter; augmented batches run the whole tower, the "
            "frozen-prefix cache serves evaluation only). Never applied in evaluation."
        ),
    ] = BEHAVIOR.augment,
    rdm_loss_weight: Annotated[
        float,
        typer.Option(  # range checked by the config: one message for -1, nan and inf
            help="Weight L of the geometry term: loss = MSE + L x (1 - Pearson r) between the "
            "batch's model RDM and target RDM (1 - Pearson of the 66-d rows). 0 = the MSE alone.",
        ),
    ] = BEHAVIOR.rdm_loss_weight,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last epoch.")
    ] = False,
    device: DeviceOption = BEHAVIOR.device,
    precision: PrecisionOption = BEHAVIOR.precision,
    devices: DevicesOption = BEHAVIOR.devices,
    data_dir: DataDirOption = None,
    allow_random_init: AllowRandomInitOption = BEHAVIOR.allow_random_init,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune a CLIP (or text) backbone to predict the SPoSE 66-d behavioural embedding.

    Trains DoRA adapters (and the head) on the 1,806 concepts outside the 48-object RDM, with early
    stopping on the validation loss (the MSE, plus the geometry term with --rdm-loss-weight);
    prints the run's metrics.json (before/after) as JSON.
    """
    from clip_hba.training.behavior import fit_behavior

    config = BehaviorFitConfig(
        model=model,
        out=str(out),
        inputs=InputConfig(
            images=path_or_none(images),
            images_csv=path_or_none(images_csv),
            exemplar=exemplar,
            skip_missing=skip_missing,
            normalization=normalization,
            text_template=text_template,
            max_text_tokens=max_text_tokens,
        ),
        adapter=AdapterConfig(
            rank=rank,
            alpha=alpha,
            layers=int_tuple("layers", layers),
            label_layers=int_tuple("text-layers", text_layers),
            modules=None if modules is None else tuple(m.strip() for m in modules.split(",")),
            use_dora=dora,
            dropout=adapter_dropout,
        ),
        head=HeadConfig(kind=head, template=template, logit_scale=logit_scale),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        val_fraction=val_fraction,
        cache=cache,
        lr_schedule=lr_schedule,
        train_dropout=train_dropout,
        max_concepts=max_concepts,
        augment=augment,
        rdm_loss_weight=rdm_loss_weight,
        device=device,
        precision=precision,
        devices=devices,
        data_dir=path_or_none(data_dir),
        allow_random_init=allow_random_init,
    )
    from clip_hba.training.runs import RunDir

    result = fit_behavior(
        config,
        resume=resume,
        verbose=not quiet,
        options_given=options_given(ctx) if resume else None,
    )
    emit(RunDir(result.run_dir).read_metrics())
