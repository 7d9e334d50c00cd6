"""Random models and synthetic images for tests, benchmarks and examples (no network needed).

`make_random_clip` saves a randomly initialised CLIP of any shape (tiny for tests, CLIP ViT-L/14
for benchmarks) with a character-level CLIP tokenizer; `make_things_images` writes synthetic
images in the THINGS folder layout.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = [
    "CLIP_SHAPES",
    "char_level_clip_tokenizer",
    "make_random_clip",
    "make_things_images",
    "make_tiny_bert",
    "make_tiny_clip",
    "make_tiny_vit",
]


# `make_random_clip` settings with the shapes of OpenAI's CLIPs (random weights: benchmarks)
CLIP_SHAPES: dict[str, dict] = {
    "vit-b32": dict(  # vision: 12 blocks, width 768, patch 32, 224 px; text: 12 x 512
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        text=dict(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8
        ),
        projection_dim=512,
    ),
    "vit-l14": dict(  # vision: 24 blocks, width 1024, patch 14, 224 px; text: 12 x 768
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        text=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        ),
        projection_dim=768,
    ),
}


def char_level_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (one token per character)."""
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def make_random_clip(
    path: Path,
    *,
    vision: dict | None = None,
    text: dict | None = None,
    projection_dim: int = 16,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised CLIP and a character-level tokenizer to ``path``.

    ``vision`` and ``text`` override the tiny defaults (width 32; 3 vision and 2 text blocks;
    32 px images in 8 px patches), e.g. ``vision=dict(hidden_size=1024, ...)``.
    """
    tokenizer = char_level_clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(
        text_config={**text_config, **(text or {})},
        vision_config={**vision_config, **(vision or {})},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny CLIP (width 32; 3 vision and 2 text blocks; 32 px images) for tests."""
    return make_random_clip(path, seed=seed)


def make_tiny_vit(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised ViT (width 32, 2 blocks, 32 px images) to ``path``."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config).save_pretrained(path)
    return path


def make_tiny_bert(path: Path, seed: int = 0, n_layers: int = 3) -> Path:
    """Save a randomly initialised BERT (width 32, 3 layers) with a BERT tokenizer to ``path``."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz:/-,.'"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab_file = path / "vocab.txt"
    path.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_things_images(
    root: Path,
    concept_ids,
    size: int = 40,
    seed: int = 0,
    exemplars: Sequence[str] | dict[str, Sequence[str]] = ("_01b",),
) -> Path:
    """Synthetic images in the THINGS layout: root/object_images/<id>/<id><exemplar>.jpg.

    ``exemplars``: the file-name suffixes of every concept's images, or per concept id (a
    concept not in the dict gets ``_01b``).
    """
    rng = np.random.default_rng(seed)
    for concept in concept_ids:
        folder = root / "object_images" / concept
        folder.mkdir(parents=True, exist_ok=True)
        suffixes = exemplars.get(concept, ("_01b",)) if isinstance(exemplars, dict) else exemplars
        for suffix in suffixes:
            pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{concept}{suffix}.jpg", quality=95)
    return root
