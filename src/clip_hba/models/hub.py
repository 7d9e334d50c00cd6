"""Where a base model comes from: a local ``save_pretrained`` folder, the Hugging Face cache or
the hub, with one clear error for each way that can fail.

Hugging Face retries an unreachable hub for about half a minute, printing every retry; a user
offline should instead learn in a second that a local folder is the way, so the hub is probed
once (one TCP connection, a few seconds at most) before anything is downloaded.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clip_hba._validation import InputError

__all__ = ["ModelSource", "hub_unreachable", "load_failure", "resolve_model_source"]

HUB_PROBE_TIMEOUT_S = 3.0
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_OFFLINE_HINT = (
    "offline, give a folder written by save_pretrained (model.save_pretrained(DIR) and, for "
    "text models, tokenizer.save_pretrained(DIR))"
)


@dataclass(frozen=True)
class ModelSource:
    """What `load_backbone` passes to ``from_pretrained``: the name and whether to stay local."""

    name: str
    local_only: bool  # a folder, or the hub cache when the hub cannot be reached
    is_folder: bool


def resolve_model_source(name_or_path: str | os.PathLike, local_only: bool = False) -> ModelSource:
    """Check a model folder (config and weights readable), or decide how to reach a hub id.

    Raises
    ------
    InputError
        A folder without a readable ``config.json`` or weights file.
    """
    name = str(name_or_path)
    path = Path(name)
    if path.is_dir():
        _check_folder(path)
        return ModelSource(name, local_only=True, is_folder=True)
    if path.exists() or name.endswith((".json", ".safetensors", ".bin")):
        raise InputError(
            f"--model {name!r} is not a model folder or a Hugging Face id; give the folder that "
            "save_pretrained wrote (holding config.json and model.safetensors)."
        )
    offline = local_only or _offline_mode()
    return ModelSource(name, local_only=offline or hub_unreachable() is not None, is_folder=False)


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the hub (``HF_ENDPOINT`` or huggingface.co) cannot be reached; None if it can (or
    if a proxy is set: the connection goes through it, which one probe cannot judge)."""
    if _offline_mode():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return None
    try:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host = endpoint.hostname or "huggingface.co"
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    except ValueError as err:
        return f"HF_ENDPOINT is not a URL ({err})"
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{host}: {err.strerror or err}"


def _offline_mode() -> bool:
    # huggingface_hub's own reading of HF_HUB_OFFLINE (1, ON, YES, TRUE in any case)
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def load_failure(source: ModelSource, err: BaseException, what: str = "model") -> InputError:
    """The one-line error for ``from_pretrained`` failing on ``source``."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if source.is_folder:
        return InputError(
            f"Cannot load the {what} in {source.name}: {reason}. Its files may be damaged or "
            "truncated; write the folder again with save_pretrained."
        )
    if source.local_only:
        why = hub_unreachable() or "local files only"
        return InputError(
            f"Cannot load {source.name!r}: it is not a local folder, the Hugging Face hub "
            f"cannot be reached ({why}) and its cache has no copy; {_OFFLINE_HINT}."
        )
    return InputError(
        f"Cannot load {source.name!r} from the Hugging Face hub ({reason}); check the id, or "
        f"{_OFFLINE_HINT}."
    )


def _check_folder(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise InputError(
            f"{path} is not a model folder: it has no config.json (a folder written by "
            "save_pretrained holds config.json and model.safetensors)."
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"Cannot read {config}: it is not valid JSON ({err}).") from None
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise InputError(
            f"{path} holds no weights: expected model.safetensors (or pytorch_model.bin), as "
            "save_pretrained writes them."
        )
