"""Id-keyed data: the THINGS concepts and behavioural data, concept images, embeddings.

- `clip_hba.data.things`: the 1,854 concepts, SPoSE targets and labels, splits, RDM48, test
  triplets (bundled files in ``data/bundled/``, or a ``data_dir`` of your own).
- `clip_hba.data.images`: the images of each concept (THINGS layout or a CSV; one exemplar or
  all), preprocessing, `ImagePixels` (pixels by row, from memory or disk).
- `clip_hba.data.transforms`: seeded training augmentation and image corruptions.
- `clip_hba.data.embeddings`: `ConceptEmbedding` / `StackedEmbedding` / `ImageEmbedding` (one
  row per image) and their files.
"""

from clip_hba.data.embeddings import (
    ConceptEmbedding,
    ImageEmbedding,
    StackedEmbedding,
    check_embedding_out,
    read_embedding,
    read_ids,
    read_stacked_embedding,
    save_embedding,
    save_image_embedding,
    save_stacked_embedding,
)
from clip_hba.data.images import (
    EXEMPLAR_SETS,
    NORMALIZATIONS,
    ImagePixels,
    ImageSet,
    find_images,
    load_pixels,
)
from clip_hba.data.things import (
    DATA_DIR_ENV,
    INDEX_ORDERS,
    N_CONCEPTS,
    SPOSE_NAME,
    Concepts,
    ConceptSplit,
    IndexOrder,
    Triplets,
    bundled_data_dir,
    check_things_ids,
    load_concepts,
    load_rdm48,
    load_spose,
    load_spose_labels,
    load_test_triplets,
    named_embedding,
    rescale_minmax,
    resolve_data_dir,
    split_concepts,
)
from clip_hba.data.transforms import (
    CORRUPTIONS,
    SEVERITIES,
    augment_image,
    corrupt_image,
    parse_corruptions,
    parse_severities,
)

__all__ = [
    "CORRUPTIONS",
    "DATA_DIR_ENV",
    "EXEMPLAR_SETS",
    "INDEX_ORDERS",
    "NORMALIZATIONS",
    "N_CONCEPTS",
    "SEVERITIES",
    "SPOSE_NAME",
    "ConceptEmbedding",
    "ConceptSplit",
    "Concepts",
    "ImageEmbedding",
    "ImagePixels",
    "ImageSet",
    "IndexOrder",
    "StackedEmbedding",
    "Triplets",
    "augment_image",
    "bundled_data_dir",
    "check_embedding_out",
    "check_things_ids",
    "corrupt_image",
    "find_images",
    "load_concepts",
    "load_pixels",
    "load_rdm48",
    "load_spose",
    "load_spose_labels",
    "load_test_triplets",
    "named_embedding",
    "parse_corruptions",
    "parse_severities",
    "read_embedding",
    "read_ids",
    "read_stacked_embedding",
    "rescale_minmax",
    "resolve_data_dir",
    "save_embedding",
    "save_image_embedding",
    "save_stacked_embedding",
    "split_concepts",
]
