"""Id-keyed data: the THINGS concepts and behavioural data, concept images, embeddings.

- `clip_hba.data.things`: the 1,854 concepts, SPoSE targets and labels, splits, RDM48, test
  triplets (bundled files in ``data/bundled/``, or a ``data_dir`` of your own).
- `clip_hba.data.images`: one image per concept (THINGS layout or a CSV), preprocessing.
- `clip_hba.data.embeddings`: `ConceptEmbedding` / `StackedEmbedding` and their files.
"""

from clip_hba.data.embeddings import (
    ConceptEmbedding,
    StackedEmbedding,
    read_embedding,
    read_ids,
    read_stacked_embedding,
    save_embedding,
    save_stacked_embedding,
)
from clip_hba.data.images import NORMALIZATIONS, ImageSet, find_images, load_pixels
from clip_hba.data.things import (
    DATA_DIR_ENV,
    INDEX_ORDERS,
    N_CONCEPTS,
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
    rescale_minmax,
    resolve_data_dir,
    split_concepts,
)

__all__ = [
    "DATA_DIR_ENV",
    "INDEX_ORDERS",
    "NORMALIZATIONS",
    "N_CONCEPTS",
    "ConceptEmbedding",
    "ConceptSplit",
    "Concepts",
    "ImageSet",
    "IndexOrder",
    "StackedEmbedding",
    "Triplets",
    "bundled_data_dir",
    "check_things_ids",
    "find_images",
    "load_concepts",
    "load_pixels",
    "load_rdm48",
    "load_spose",
    "load_spose_labels",
    "load_test_triplets",
    "read_embedding",
    "read_ids",
    "read_stacked_embedding",
    "rescale_minmax",
    "resolve_data_dir",
    "save_embedding",
    "save_stacked_embedding",
    "split_concepts",
]
