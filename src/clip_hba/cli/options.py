"""Options shared by several commands, defaults read from the config dataclasses, and output.

Defaults live once, in the dataclasses of the library (`defaults`); the commands read them
here. The config modules import no torch, so ``clip-hba --help`` stays fast; the commands
import the rest of the library when they run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import typer

from clip_hba._io import check_output_file, write_json_atomic
from clip_hba._validation import InputError
from clip_hba.training.config import option_name

__all__ = [
    "AllowRandomInitOption",
    "AllowUnfinishedOption",
    "BatchSizeOption",
    "DataDirOption",
    "DeviceOption",
    "DevicesOption",
    "ExemplarOption",
    "ImagesCsvOption",
    "ImagesOption",
    "NormalizationOption",
    "PrecisionOption",
    "QuietOption",
    "RunExemplarOption",
    "SkipMissingOption",
    "defaults",
    "emit",
    "int_tuple",
    "joined",
    "launched_rank",
    "options_given",
    "path_or_none",
    "split_list",
    "time_window",
    "with_option_names",
    "with_options",
]


def defaults(config_class: type) -> SimpleNamespace:
    """The default of every field of a dataclass that has one (factories called)."""
    values = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return SimpleNamespace(**values)


def with_options(command: Callable, options: Callable) -> Callable:
    """Give ``command`` (which takes ``**options``) the parameters of ``options`` too.

    Typer has no option groups; this lets two commands share one list of options (each
    written once, in ``options``' signature) instead of repeating it.
    """
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    shared = list(inspect.signature(options, eval_str=True).parameters.values())
    required = [p for p in shared if p.default is inspect.Parameter.empty]
    optional = [p for p in shared if p.default is not inspect.Parameter.empty]
    # required options first, as in a hand-written signature
    ordered = required + own + optional
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in ordered]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return command


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="THINGS data directory holding files named like the bundled ones "
        "(default: $CLIP_HBA_THINGS_DIR, else the files bundled with clip-hba).",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(help="Torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."),
]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]
DevicesOption = Annotated[
    int,
    typer.Option(
        help="Data-parallel processes: N processes on this machine (one GPU each with CUDA, "
        "else the CPU), each running the tower on its share of every batch; the batch stays "
        "--batch-size in total and the result is the one-process run's. Or launch with "
        "torchrun / accelerate launch instead (leave this at 1).",
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="Number format of the forward passes: fp32, bf16 or fp16 (torch autocast: weights, "
        "losses, RDMs and statistics stay float32; fp16 training scales the loss). bf16 runs "
        "on CPUs too."
    ),
]
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
    str,
    typer.Option(
        help="Images per concept: 'first' (the first file by name: _01b in THINGS where it "
        "exists, else _01s/_02s; a CSV's first row), 'all' (every image: a sample each in "
        "training, the mean per concept in evaluation) or a file-name suffix such as _01b "
        "(concepts without it are missing)."
    ),
]
NormalizationOption = Annotated[
    Literal["things", "clip"],
    typer.Option(help="Image normalisation: THINGS mean/std or CLIP's own."),
]
RunExemplarOption = Annotated[
    str | None,
    typer.Option(
        help="Images per concept: 'first' (the first file by name), 'all' (one row per "
        "concept: the mean over its images) or a file-name suffix such as _01b (default: the "
        "run's; a base model: first)."
    ),
]
SkipMissingOption = Annotated[
    bool, typer.Option(help="Leave out concepts without an image (reported) instead of failing.")
]
BatchSizeOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Inputs per batch: concepts, or images with --exemplar all (results do not "
        "depend on it).",
    ),
]
AllowUnfinishedOption = Annotated[
    bool,
    typer.Option(
        help="Accept a run whose training did not finish (its best epoch so far) instead of "
        "refusing it."
    ),
]
AllowRandomInitOption = Annotated[
    bool,
    typer.Option(
        help="Accept a base model whose files lack some of its weights (Hugging Face would "
        "initialise them at random) instead of refusing it."
    ),
]


def int_tuple(name: str, text: str) -> tuple[int, ...]:
    """Comma-separated block numbers ('' = none)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip()) if text.strip() else ()
    except ValueError:
        raise InputError(
            f"Invalid value for '--{name}': expected comma-separated block numbers such as "
            f"'-2,-1', got {text!r}."
        ) from None


def joined(values: tuple | list) -> str:
    """The comma-separated text of a tuple default (``(-2, -1)`` -> ``"-2,-1"``)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def time_window(text: str | None, option: str = "--time-window") -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        start, stop = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"Invalid value for '{option}': expected START,STOP in ms, got {text!r}."
        ) from None
    if not (math.isfinite(start) and math.isfinite(stop) and start < stop):
        raise InputError(
            f"Invalid value for '{option}': expected finite START < STOP in ms, got {text!r}."
        )
    return start, stop


def path_or_none(value: Path | None) -> str | None:
    return None if value is None else str(value)


_SETTING = re.compile(r"Invalid value for '([a-z][a-z0-9_]*)'")


def with_option_names(message: str) -> str:
    """``message`` with a setting's name (``'weight_decay'``) replaced by its command-line
    option (``'--weight-decay'``): the library names its settings, the command line options."""
    return _SETTING.sub(lambda m: f"Invalid value for '{option_name(m[1])}'", message)


def options_given(ctx: typer.Context) -> frozenset[str]:
    """The options of the running command that were given (command line or environment).

    A resumed run takes its own settings for every other option.
    """
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return frozenset(
        "--" + name.replace("_", "-")
        for name, source in sources.items()
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
    )


def check_outputs(out: Path | None = None, plot: Path | None = None) -> None:
    """Refuse an --out or --plot that cannot be written, before any work starts."""
    if out is not None:
        check_output_file(out, "--out")
    if plot is not None:
        check_output_file(plot, "--plot")
        from clip_hba.evaluation.plots import check_figure_path

        check_figure_path(plot)


def launched_rank() -> int:
    """This process's rank when torchrun or accelerate launched several (else 0)."""
    return int(os.environ.get("RANK", "0") or 0)


def emit(payload: Any, out: Path | None = None) -> None:
    """Print ``payload`` as JSON (and write it to ``out``); under torchrun, rank 0 only."""
    if launched_rank() > 0:
        return
    if out is not None:
        write_json_atomic(out, payload)
    typer.echo(json.dumps(payload, indent=2))
