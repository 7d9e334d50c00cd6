"""The ``clip-hba`` command line: a thin layer over the Python API.

Every command parses its options, calls one library function and prints JSON to stdout.
Bad input ends with one line on stderr (``clip-hba: error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from clip_hba import __version__
from clip_hba._io import write_json_atomic
from clip_hba._validation import InputError
from clip_hba.cli_meg import (
    evaluate_meg_command,
    fit_individual_command,
    fit_meg_command,
    meg_app,
    simulate_app,
)

if TYPE_CHECKING:
    from clip_hba.embeddings import ConceptEmbedding

app = typer.Typer(
    name="clip-hba",
    help="Personalized, brain-aligned vision models (CLIP-HBA): fit, embed and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
evaluate_app = typer.Typer(
    help="Score embeddings or models against human data.", no_args_is_help=True
)
app.add_typer(evaluate_app, name="evaluate")
fit_app = typer.Typer(help="Fine-tune models on human data.", no_args_is_help=True)
app.add_typer(fit_app, name="fit")
rsa_app = typer.Typer(
    help="Representational similarity analysis of RDM files.", no_args_is_help=True
)
app.add_typer(rsa_app, name="rsa")
fit_app.command("meg")(fit_meg_command)
fit_app.command("individual")(fit_individual_command)
evaluate_app.command("meg")(evaluate_meg_command)
app.add_typer(meg_app, name="meg")
app.add_typer(simulate_app, name="simulate")

EXIT_BAD_INPUT = 2

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="THINGS data directory holding files named like the bundled ones "
        "(default: $CLIP_HBA_THINGS_DIR, else the files bundled with clip-hba).",
    ),
]
SeedOption = Annotated[
    int, typer.Option(min=0, help="Random seed for bootstrap resampling and permutations.")
]
NBootstrapOption = Annotated[
    int,
    typer.Option(
        "--n-bootstrap", min=1, help="Bootstrap samples (over concepts) for the RDM48 CI."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clip-hba {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@evaluate_app.command("behavior")
def evaluate_behavior_command(
    embedding: Annotated[
        Path,
        typer.Option(
            help="Embedding file (.npy, .txt, .csv or .tsv), one row per concept: all 1,854 THINGS "
            "concepts in official order, or any subset with --ids."
        ),
    ],
    ids: Annotated[
        Path | None,
        typer.Option(help="File with the THINGS concept id of each embedding row, one per line."),
    ] = None,
    rdm_metric: Annotated[
        Literal["pearson", "cosine", "euclidean"],
        typer.Option(
            help="Dissimilarity for the model's 48-object RDM.",
        ),
    ] = "pearson",
    similarity: Annotated[
        Literal["dot", "cosine"],
        typer.Option(
            help="Similarity for picking a triplet's most similar pair.",
        ),
    ] = "dot",
    n_bootstrap: NBootstrapOption = 1000,
    ci_level: Annotated[float, typer.Option(help="Coverage of the confidence intervals.")] = 0.95,
    seed: SeedOption = 0,
    triplet_order: Annotated[
        Literal["auto", "unique_id", "sorted_names"],
        typer.Option(
            help="List that test_triplets.csv's concept numbers index; 'auto' = sorted_names for "
            "the bundled file (its actual convention), unique_id for a --data-dir.",
        ),
    ] = "auto",
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the JSON result to this file.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a figure of model vs human 48-object RDM (.png/.pdf)."),
    ] = None,
) -> None:
    """Score a concept embedding on the 48-object RDM and the 20,000 test triplets.

    Prints one JSON object: rdm48_spearman (+ bootstrap CI), odd_one_out_accuracy (+ Wilson CI),
    n_triplets used, n_concepts, and the settings.
    """
    from clip_hba.embeddings import read_embedding
    from clip_hba.evaluate import evaluate_behavior
    from clip_hba.plots import check_figure_path
    from clip_hba.things import load_concepts

    if plot is not None:
        check_figure_path(plot)
    default_ids = None if ids is not None else load_concepts(data_dir).ids
    concept_embedding = read_embedding(embedding, ids=ids, default_ids=default_ids)
    result = evaluate_behavior(
        concept_embedding,
        rdm_metric=rdm_metric,
        similarity=similarity,
        n_bootstrap=n_bootstrap,
        ci_level=ci_level,
        seed=seed,
        triplet_index_order=triplet_order,
        data_dir=data_dir,
    )
    if plot is not None:
        _plot_rdm48(concept_embedding, rdm_metric, plot, data_dir, title=embedding.name)
    _emit(result.to_dict(), out)


@rsa_app.command("compare")
def rsa_compare_command(
    rdm_a: Annotated[
        Path,
        typer.Argument(
            help="First RDM (.npy/.txt/.csv/.tsv): square symmetric (n, n), or the condensed "
            "upper triangle as one row or column (NaN = missing pair)."
        ),
    ],
    rdm_b: Annotated[Path, typer.Argument(help="Second RDM, same formats.")],
    ids_a: Annotated[
        Path | None,
        typer.Option(
            help="Concept id of each condition of RDM A, one per line (with --ids-b: "
            "the RDMs are aligned by id over the shared concepts)."
        ),
    ] = None,
    ids_b: Annotated[Path | None, typer.Option(help="Concept ids of RDM B.")] = None,
    method: Annotated[
        Literal["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"],
        typer.Option(help="How to compare the two RDMs."),
    ] = "spearman",
    n_bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap samples over conditions for the CI (0: no CI).")
    ] = 1000,
    n_permutations: Annotated[
        int, typer.Option(min=0, help="Condition permutations for the p-value (0: no test).")
    ] = 1000,
    ci_level: Annotated[float, typer.Option(help="Coverage of the confidence interval.")] = 0.95,
    seed: SeedOption = 0,
    out: Annotated[
        Path | None, typer.Option(help="Also write the JSON result to this file.")
    ] = None,
) -> None:
    """Compare two RDMs: value, bootstrap CI over conditions, permutation p-value (as JSON)."""
    from clip_hba.rsa import read_rdm
    from clip_hba.stats import rdm_comparison

    if (ids_a is None) != (ids_b is None):
        raise InputError("Give concept ids for both RDMs (--ids-a and --ids-b) or for neither.")
    result = rdm_comparison(
        read_rdm(rdm_a, ids_a),
        read_rdm(rdm_b, ids_b),
        method=method,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        seed=seed,
    )
    _emit(result.to_dict(), out)


ImagesOption = Annotated[
    Path | None,
    typer.Option(
        help="Concept images: THINGS layout (object_images/<concept>/<concept>_01b.jpg) or a "
        "folder with images.csv (columns image,concept_id). Not used by text backbones, which "
        "read each concept's word and definition."
    ),
]
ImagesCsvOption = Annotated[
    Path | None, typer.Option(help="CSV of image,concept_id rows (paths relative to --images).")
]
ExemplarOption = Annotated[
    str, typer.Option(help="THINGS layout: file-name suffix of the exemplar image per concept.")
]
NormalizationOption = Annotated[
    Literal["things", "clip"],
    typer.Option(help="Image normalisation: THINGS mean/std or CLIP's own."),
]
SkipMissingOption = Annotated[
    bool, typer.Option(help="Leave out concepts without an image (reported) instead of failing.")
]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Concepts per batch.")]


def _int_tuple(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip()) if text.strip() else ()
    except ValueError:
        raise InputError(
            f"Invalid value for '--{name}': expected comma-separated block numbers such as "
            f"'-2,-1', got {text!r}."
        ) from None


@fit_app.command("behavior")
def fit_behavior_command(
    model: Annotated[
        str, typer.Option(help="Base model: Hugging Face hub id or local save_pretrained folder.")
    ] = "openai/clip-vit-large-patch14",
    out: Annotated[
        Path, typer.Option(help="Run directory (config, weights, log, metrics).")
    ] = Path("runs/behavior"),
    images: ImagesOption = None,
    images_csv: ImagesCsvOption = None,
    exemplar: ExemplarOption = "_01b",
    normalization: NormalizationOption = "things",
    skip_missing: SkipMissingOption = False,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum number of epochs.")] = 500,
    batch_size: BatchSizeOption = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    patience: Annotated[
        int,
        typer.Option(min=1, help="Stop after this many epochs without a better validation MSE."),
    ] = 20,
    seed: SeedOption = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Share of the 1,806 non-held-out concepts used for validation.")
    ] = 0.2,
    rank: Annotated[int, typer.Option(min=1, help="Adapter rank.")] = 32,
    alpha: Annotated[
        float, typer.Option(help="Adapter alpha (update scaled by alpha/rank).")
    ] = 16.0,
    layers: Annotated[
        str,
        typer.Option(
            help="Blocks of the concept (vision) tower with adapters; negative = from the end."
        ),
    ] = "-2,-1",
    text_layers: Annotated[
        str,
        typer.Option(help="Blocks of CLIP's text tower with adapters ('' = frozen text tower)."),
    ] = "-1",
    modules: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated module names inside a block to adapt (default: the attention "
            "output projection, out_proj for CLIP)."
        ),
    ] = None,
    dora: Annotated[bool, typer.Option(help="DoRA (on) or plain LoRA (--no-dora).")] = True,
    adapter_dropout: Annotated[
        float,
        typer.Option(help="Dropout on the adapters' input while training (needs --train-dropout)."),
    ] = 0.0,
    text_template: Annotated[
        str,
        typer.Option(help="Text backbones: the text of a concept, from {word} and {definition}."),
    ] = "{word}: {definition}",
    max_text_tokens: Annotated[
        int, typer.Option(min=4, help="Text backbones: longest concept text in tokens.")
    ] = 64,
    head: Annotated[
        Literal["prompt_cosine", "linear"],
        typer.Option(
            help="prompt_cosine: logit_scale x cos(features, label prompt); linear: a linear map."
        ),
    ] = "prompt_cosine",
    template: Annotated[
        str, typer.Option(help="Prompt of a dimension label; must contain {label}.")
    ] = "{label}",
    logit_scale: Annotated[float, typer.Option(help="Scale of the prompt-cosine head.")] = 100.0,
    cache: Annotated[
        Literal["auto", "memory", "disk", "off"],
        typer.Option(
            help="Frozen-prefix cache: auto = memory up to 4 GiB, else disk; off = run every block."
        ),
    ] = "auto",
    lr_schedule: Annotated[
        Literal["constant", "cosine"],
        typer.Option(help="Learning rate per epoch: constant, or cosine decay to 0 over --epochs."),
    ] = "constant",
    train_dropout: Annotated[
        bool,
        typer.Option(help="Use the backbone's dropout in the trained blocks while training."),
    ] = False,
    max_concepts: Annotated[
        int | None,
        typer.Option(min=4, help="Use only this many train+validation concepts (quick runs)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last epoch.")
    ] = False,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
) -> None:
    """Fine-tune a CLIP (or text) backbone to predict the SPoSE 66-d behavioural embedding.

    Trains DoRA adapters (and the head) on the 1,806 concepts outside the 48-object RDM, with early
    stopping on the validation MSE; prints the run's metrics.json (before/after) as JSON.
    """
    from clip_hba.adapters import AdapterConfig
    from clip_hba.inputs import InputConfig
    from clip_hba.models import HeadConfig
    from clip_hba.train import BehaviorFitConfig, fit_behavior

    config = BehaviorFitConfig(
        model=model,
        out=str(out),
        inputs=InputConfig(
            images=None if images is None else str(images),
            images_csv=None if images_csv is None else str(images_csv),
            exemplar=exemplar,
            skip_missing=skip_missing,
            normalization=normalization,
            text_template=text_template,
            max_text_tokens=max_text_tokens,
        ),
        adapter=AdapterConfig(
            rank=rank,
            alpha=alpha,
            layers=_int_tuple("layers", layers),
            label_layers=_int_tuple("text-layers", text_layers),
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
        device=device,
        data_dir=None if data_dir is None else str(data_dir),
    )
    result = fit_behavior(config, resume=resume)
    _emit(json.loads((result.run_dir / "metrics.json").read_text()), None)


DeviceOption = Annotated[
    str,
    typer.Option(help="Torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."),
]


@app.command("embed")
def embed_command(
    model: Annotated[
        str,
        typer.Option(help="A run directory of clip-hba fit, or a base model (hub id or folder)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output: .npz (embedding, concept_ids, image_ids, labels[, rdm]) or .csv/.tsv."
        ),
    ],
    images: ImagesOption = None,
    images_csv: ImagesCsvOption = None,
    exemplar: Annotated[
        str | None,
        typer.Option(help="THINGS layout: exemplar suffix (default: the run's, else _01b)."),
    ] = None,
    normalization: Annotated[
        Literal["things", "clip"] | None,
        typer.Option(help="Image normalisation (default: the run's, else things)."),
    ] = None,
    skip_missing: SkipMissingOption = False,
    batch_size: BatchSizeOption = 64,
    rdm: Annotated[
        bool, typer.Option(help="Also store the RDM (1 - Pearson, condensed) in the .npz.")
    ] = False,
    layers: Annotated[
        bool,
        typer.Option(
            help="Instead of the 66-d head, write every block's pooled feature (CLIP: class "
            "token through the final norm and projection; text: mean over tokens) as an .npz "
            "of shape (blocks, items, dim), for `meg rsa`'s layer x time matrix."
        ),
    ] = False,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
) -> None:
    """Write the model's 66-d behavioural embedding of every concept image (or concept text).

    Images are prepared as the run was trained (normalisation, text template) unless overridden.
    Deterministic and independent of --batch-size. Prints a JSON summary.
    """
    import dataclasses

    from clip_hba.embed import (
        embed,
        embed_layers,
        load_model,
        save_embedding,
        save_layer_embedding,
    )
    from clip_hba.inputs import concept_inputs

    meg_run = Path(model) / "config.json"
    if meg_run.is_file() and json.loads(meg_run.read_text()).get("task") == "meg":
        _embed_meg(Path(model), out, images, images_csv, batch_size, rdm, device)
        return
    behavior_model, trained_inputs = load_model(model, data_dir, device)
    config = dataclasses.replace(
        trained_inputs,
        images=None if images is None else str(images),
        images_csv=None if images_csv is None else str(images_csv),
        exemplar=exemplar or trained_inputs.exemplar,
        normalization=normalization or trained_inputs.normalization,
        skip_missing=skip_missing,
    )
    inputs = concept_inputs(behavior_model.backbone, None, config, data_dir, things_ids_only=False)
    if layers:
        if rdm:
            raise InputError("--rdm and --layers cannot be combined.")
        features = embed_layers(behavior_model, inputs, batch_size)
        save_layer_embedding(out, features, inputs.concept_ids, inputs.item_ids)
        n_layers, n_items, n_dims = features.shape
        _emit({"out": str(out), "n_items": n_items, "n_layers": n_layers, "n_dims": n_dims}, None)
        return
    embedding = embed(behavior_model, inputs, batch_size)
    save_embedding(out, embedding, inputs.item_ids, with_rdm=rdm)
    _emit({"out": str(out), "n_items": embedding.n_concepts, "n_dims": embedding.n_dims}, None)


def _embed_meg(
    run_dir: Path,
    out: Path,
    images: Path | None,
    images_csv: Path | None,
    batch_size: int,
    with_rdm: bool,
    device: str,
) -> None:
    """`embed` for a MEG run: (T, N, 66) embeddings with the time axis (and (T, pairs) RDMs)."""
    import dataclasses

    from clip_hba.embed import meg_embeddings, save_time_embedding
    from clip_hba.inputs import concept_inputs
    from clip_hba.things import load_spose_labels
    from clip_hba.train_meg import MegFitConfig, load_meg_run

    config = MegFitConfig.from_dict(json.loads((run_dir / "config.json").read_text())["fit"])
    model = load_meg_run(run_dir, device)
    inputs_config = dataclasses.replace(
        config.inputs,
        images=str(images) if images else config.inputs.images,
        images_csv=str(images_csv) if images_csv else config.inputs.images_csv,
    )
    inputs = concept_inputs(
        model.backbone, None, inputs_config, config.data_dir, things_ids_only=False
    )
    embeddings = meg_embeddings(model, inputs, batch_size)
    save_time_embedding(
        out,
        embeddings,
        model.times_ms,
        inputs.concept_ids,
        inputs.item_ids,
        load_spose_labels(config.data_dir),
        with_rdm,
    )
    n_times, n_items, n_dims = embeddings.shape
    _emit({"out": str(out), "n_items": n_items, "n_times": n_times, "n_dims": n_dims}, None)


@app.command("demo")
def demo_command(
    out: Annotated[
        Path,
        typer.Option(help="Folder for metrics.json, plots, the training log and the checkpoint."),
    ] = Path("clip-hba-demo"),
    quick: Annotated[
        bool,
        typer.Option(help="A few concepts and epochs in every stage: checks the pipeline fast."),
    ] = False,
) -> None:
    """Run the offline demo on all-MiniLM-L6-v2 (needs no GPU or network).

    Behaviour: each concept is read as "word: definition"; DoRA adapters and the prompt-cosine
    head over the 66 SPoSE labels are trained on the 1,806 training concepts. MEG: on 4
    simulated participants (300 concepts), the group CLIP-HBA-MEG model starts from that run,
    is evaluated on held-out concepts against the base and behaviour models, and one
    individualized model per participant gives the specificity matrix. About 12-14 minutes on 2
    CPU cores. Writes OUT/metrics.json ({"before", "after", "meg": ...}), plots, the runs
    (OUT/run, OUT/meg/...) and prints the metrics as JSON.
    """
    from clip_hba.demo import run_demo

    _emit(run_demo(out, quick=quick), None)


def _plot_rdm48(
    embedding: ConceptEmbedding, rdm_metric: str, path: Path, data_dir: Path | None, title: str
) -> None:
    from clip_hba.evaluate import rdm48_rdms
    from clip_hba.plots import plot_rdm_comparison

    rdms = rdm48_rdms(embedding, rdm_metric, data_dir)  # type: ignore[arg-type]
    if rdms is None:
        raise InputError("Cannot plot the RDM48: the embedding has fewer than 3 of its concepts.")
    plot_rdm_comparison(*rdms, path, title=title)


def _emit(payload: dict, out: Path | None) -> None:
    if out is not None:
        write_json_atomic(out, payload)
    typer.echo(json.dumps(payload, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``clip-hba`` console script."""
    try:
        code = app(args=argv, prog_name="clip-hba", standalone_mode=False)
    except InputError as err:
        _fail(str(err))
    except typer.TyperException as err:  # usage errors of the command line itself
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # a bare group ("clip-hba evaluate"): typer has printed its help
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _fail(err.format_message() + where, getattr(err, "exit_code", EXIT_BAD_INPUT))
    except typer.Abort:
        _fail("aborted.", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"clip-hba: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
