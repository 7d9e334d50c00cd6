"""The ``clip-hba`` command line: a thin layer over the Python API.

Every command parses its options, calls one library function and prints JSON to stdout.
Bad input ends with one line on stderr (``clip-hba: error: ...``) and exit status 2.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from clip_hba import __version__
from clip_hba._validation import InputError
from clip_hba.cli.behavior import fit_behavior_command
from clip_hba.cli.meg import meg_app, simulate_app
from clip_hba.cli.meg_fit import evaluate_meg_command, fit_individual_command, fit_meg_command
from clip_hba.cli.options import (
    AllowRandomInitOption,
    AllowUnfinishedOption,
    BatchSizeOption,
    DataDirOption,
    DeviceOption,
    ImagesCsvOption,
    ImagesOption,
    PrecisionOption,
    QuietOption,
    RunExemplarOption,
    SkipMissingOption,
    check_outputs,
    emit,
    launched_rank,
    with_option_names,
)
from clip_hba.models.config import InputConfig

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
fit_app.command("behavior")(fit_behavior_command)
fit_app.command("meg")(fit_meg_command)
fit_app.command("individual")(fit_individual_command)
evaluate_app.command("meg")(evaluate_meg_command)
app.add_typer(meg_app, name="meg")
app.add_typer(simulate_app, name="simulate")

INPUTS = InputConfig()

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it

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
    # huggingface_hub prints through its own handler: passing its records on would print twice
    logging.getLogger("huggingface_hub").propagate = False


@evaluate_app.command("behavior")
def evaluate_behavior_command(
    embedding: Annotated[
        Path | None,
        typer.Option(
            help="Embedding file (.npy, .txt, .csv or .tsv), one row per concept: all 1,854 THINGS "
            "concepts in official order, or any subset with --ids; 'spose' for the bundled SPoSE "
            "embedding. Or give --model instead."
        ),
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option(help="File with the THINGS concept id of each embedding row, one per line."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Instead of --embedding: a behaviour run (or a base image model) whose "
            "embedding of --images is scored, clean and with each of --corruptions."
        ),
    ] = None,
    images: ImagesOption = None,
    images_csv: ImagesCsvOption = None,
    exemplar: RunExemplarOption = None,
    skip_missing: SkipMissingOption = False,
    corruptions: Annotated[
        str | None,
        typer.Option(
            help="With --model: comma-separated corruptions of every image, from blur, noise, "
            "jpeg, grayscale, contrast (ImageNet-C's parameters where it has them; default: "
            "clean images only)."
        ),
    ] = None,
    severity: Annotated[
        str | None,
        typer.Option(
            help="Severities of the corruptions: a range such as 1-5 or a list 1,3,5 (default 1-5)."
        ),
    ] = None,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    allow_unfinished: AllowUnfinishedOption = False,
    allow_random_init: AllowRandomInitOption = False,
    rdm_metric: Annotated[
        Literal["pearson", "cosine", "euclidean"],
        typer.Option(
            help="Dissimilarity for the model's 48-object RDM (with --embedding).",
        ),
    ] = "pearson",
    similarity: Annotated[
        Literal["dot", "cosine"],
        typer.Option(
            help="Similarity for picking a triplet's most similar pair (with --embedding).",
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
        typer.Option(
            help="Write a figure (.png/.pdf): model vs human 48-object RDM (--embedding), or "
            "the scores against severity per corruption (--model)."
        ),
    ] = None,
) -> None:
    """Score a concept embedding (or a model's, on clean and corrupted images) on the 48-object
    RDM and the 20,000 test triplets.

    Prints one JSON object: rdm48_spearman (+ bootstrap CI), odd_one_out_accuracy (+ Wilson CI),
    n_triplets used, n_concepts, and the settings; with --model, these scores for the clean
    images and for each corruption and severity.
    """
    check_outputs(out=out, plot=plot)
    if (embedding is None) == (model is None):
        raise InputError(
            "Give either --embedding (a file) or --model (a run or base model, with --images "
            "for a base model); see clip-hba evaluate behavior --help."
        )
    _check_mode(
        model is not None,
        {
            "--ids": ids,
            "--rdm-metric": rdm_metric != "pearson",
            "--similarity": similarity != "dot",
        },
        {
            "--images": images,
            "--images-csv": images_csv,
            "--exemplar": exemplar,
            "--skip-missing": skip_missing,
            "--corruptions": corruptions,
            "--severity": severity,
            "--precision": precision != "fp32",
        },
    )
    if severity is not None and corruptions is None:
        raise InputError(
            f"--severity {severity} sets the levels of --corruptions: give --corruptions too "
            "(e.g. --corruptions blur,noise)."
        )
    if model is not None:
        from clip_hba.data.transforms import parse_corruptions, parse_severities
        from clip_hba.pipelines.robustness import evaluate_corruptions

        result = evaluate_corruptions(
            model,
            corruptions=() if corruptions is None else parse_corruptions(corruptions),
            severities=parse_severities(severity or "1-5"),
            images=images,
            images_csv=images_csv,
            exemplar=exemplar,
            skip_missing=skip_missing,
            batch_size=batch_size,
            n_bootstrap=n_bootstrap,
            ci_level=ci_level,
            seed=seed,
            device=device,
            data_dir=data_dir,
            plot=plot,
            allow_unfinished=allow_unfinished,
            allow_random_init=allow_random_init,
            precision=precision,
        )
        emit(result, out)
        return
    from clip_hba.evaluation.behavior import evaluate_embedding_file

    result = evaluate_embedding_file(
        embedding,
        ids,
        plot=plot,
        data_dir=data_dir,
        rdm_metric=rdm_metric,
        similarity=similarity,
        n_bootstrap=n_bootstrap,
        ci_level=ci_level,
        seed=seed,
        triplet_index_order=triplet_order,
    )
    emit(result.to_dict(), out)


def _check_mode(with_model: bool, embedding_only: dict, model_only: dict) -> None:
    """Refuse options of the other way of `evaluate behavior` (given = not None and not False)."""
    wrong = embedding_only if with_model else model_only
    given = [name for name, value in wrong.items() if value is not None and value is not False]
    if given:
        mode, other = ("--model", "--embedding") if with_model else ("--embedding", "--model")
        verb = "goes" if len(given) == 1 else "go"
        raise InputError(f"{', '.join(given)} {verb} with {other}, not with {mode}.")


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
    asymmetric: Annotated[
        Literal["average", "upper", "lower"] | None,
        typer.Option(
            help="A square RDM whose two triangles differ is refused unless this says how to "
            "condense it: the mean of both, or the upper or the lower triangle."
        ),
    ] = None,
) -> None:
    """Compare two RDMs: value, bootstrap CI over conditions, permutation p-value (as JSON)."""
    from clip_hba.rsa.stats import compare_rdm_files

    check_outputs(out=out)
    result = compare_rdm_files(
        rdm_a,
        rdm_b,
        ids_a,
        ids_b,
        asymmetry=asymmetric or "raise",
        method=method,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        seed=seed,
    )
    emit(result.to_dict(), out)


@app.command("embed")
def embed_command(
    model: Annotated[
        str,
        typer.Option(
            help="A run directory of clip-hba fit (behaviour or MEG), or a base model (hub id or "
            "folder)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output: .npz (embedding, concept_ids, image_ids, labels[, rdm]) or .csv/.tsv."
        ),
    ],
    images: ImagesOption = None,
    images_csv: ImagesCsvOption = None,
    exemplar: RunExemplarOption = None,
    normalization: Annotated[
        Literal["things", "clip"] | None,
        typer.Option(
            help=f"Image normalisation (default: the run's, else {INPUTS.normalization})."
        ),
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
            "of shape (blocks, items, dim), labelled block_1 (the first block) ..., for `meg "
            "rsa`'s layer x time matrix. Behaviour runs and base models (a MEG run embeds per "
            "timepoint)."
        ),
    ] = False,
    per_image: Annotated[
        bool,
        typer.Option(
            help="One row per image (concept_ids repeat, image_ids name the files) instead of "
            "one per concept; with --exemplar all, every image of every concept."
        ),
    ] = False,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    data_dir: DataDirOption = None,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_random_init: AllowRandomInitOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write the model's 66-d behavioural embedding of every concept (or concept image).

    A MEG run gives (T, N, 66) embeddings with their time axis. Images are prepared as the run
    was trained (its image folder, normalisation, text template) unless overridden.
    Deterministic and independent of --batch-size. Prints a JSON summary.
    """
    from clip_hba.pipelines.embed import embed_run

    summary = embed_run(
        model,
        out,
        images=images,
        images_csv=images_csv,
        exemplar=exemplar,
        normalization=normalization,
        skip_missing=skip_missing,
        batch_size=batch_size,
        with_rdm=rdm,
        layers=layers,
        per_image=per_image,
        device=device,
        data_dir=data_dir,
        allow_unfinished=allow_unfinished,
        allow_random_init=allow_random_init,
        verbose=not quiet,
        precision=precision,
    )
    emit(summary)


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
    individualized model per participant gives the specificity matrix. About 14 minutes on 2
    CPU cores (measured on a fresh clone). Writes OUT/metrics.json ({"before", "after",
    "meg": ...}), plots, the runs (OUT/run, OUT/meg/...) and prints the metrics as JSON.
    """
    from clip_hba.pipelines.demo import run_demo

    emit(run_demo(out, quick=quick))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``clip-hba`` console script."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _terminated.clear()
    try:
        code = _run(argv)
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)
    if code == EXIT_INTERRUPTED:  # typer's exit status for Ctrl-C (and SIGTERM, see below)
        what, code = ("terminated", EXIT_TERMINATED) if _terminated else ("interrupted", code)
        _fail(f"{what}; what was finished is kept (a training run continues with --resume).", code)
    sys.exit(code if isinstance(code, int) else 0)


def _run(argv: list[str] | None) -> int | None:
    try:
        return app(args=argv, prog_name="clip-hba", standalone_mode=False)
    except InputError as err:
        if launched_rank() > 0:  # under torchrun every process sees the same bad input
            sys.exit(EXIT_BAD_INPUT)
        _fail(with_option_names(str(err)))
    except typer.TyperException as err:  # usage errors of the command line itself
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # a bare group ("clip-hba evaluate"): typer has printed its help
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        # typer validates some values through pydantic, whose messages start "Value error, "
        message = err.format_message().replace("Value error, ", "")
        _fail(message + where, getattr(err, "exit_code", EXIT_BAD_INPUT))
    except OSError as err:  # the file system refused (a path under /proc, a full disk): no trace
        where = f" {err.filename}" if err.filename else ""
        _fail(f"Cannot use{where}: {err.strerror or err}.")
    except typer.Abort as err:  # what click makes of an EOFError nobody caught
        _fail(f"unexpected end of input ({err.__context__ or 'a file or stdin ended early'}).")
    return None


_terminated: set[bool] = set()  # holds True once SIGTERM arrived


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (kill, a cluster's scheduler) unwinds like Ctrl-C, so temporary files are removed
    _terminated.add(True)
    raise KeyboardInterrupt


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"clip-hba: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
