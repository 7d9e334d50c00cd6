"""The THINGS data layer: ids, order, targets, splits, RDM48 and triplets on the real files."""

import shutil

import numpy as np
import pytest

from clip_hba._validation import InputError
from clip_hba.data import (
    bundled_data_dir,
    load_concepts,
    load_rdm48,
    load_spose,
    load_spose_labels,
    load_test_triplets,
    split_concepts,
)
from clip_hba.evaluation import odd_one_out_predictions

# the 20 concepts whose position differs between official and Python-sorted order
REORDERED_PREFIXES = ("camera", "chicken", "crystal", "hot", "ice", "pepper")


def test_concepts_follow_official_order(concepts):
    assert len(concepts) == 1854
    assert concepts.ids[:3] == ("aardvark", "abacus", "accordion")
    # the camera_lens pitfall: official order is not Python's sorted order
    k = concepts.ids.index("camera_lens")
    assert concepts.ids[k : k + 3] == ("camera_lens", "camera1", "camera2")
    assert sorted(concepts.ids) != list(concepts.ids)
    assert concepts.words[k] == "camera lens"
    assert concepts.words[k + 1] == concepts.words[k + 2] == "camera"


def test_concept_metadata(concepts):
    row = concepts.index(["aardvark"])[0]
    assert concepts.definitions[row].startswith("nocturnal burrowing mammal")
    assert concepts.categories_of("aardvark") == ("animal", "mammal")
    assert len(concepts.high_level_categories) == 27
    assert concepts.high_level_categories[0] == "animal"
    assert concepts.high_level_categories[-1] == "weapon"
    assert concepts.category_matrix.shape == (1854, len(concepts.category_names))
    # column totals match the totals row of the categories file ("animal": 177)
    assert concepts.category_matrix[:, 0].sum() == 177


def test_index_names_unknown_ids(concepts):
    with pytest.raises(InputError, match="'camera'"):
        concepts.index(["aardvark", "camera"])


def test_spose_embedding(spose):
    assert spose.values.shape == (1854, 66)
    assert spose.concept_ids == load_concepts().ids
    assert spose.dim_labels == load_spose_labels()
    assert spose.dim_labels[0] == "metallic/artificial"
    assert spose.values.min() > -1e-3  # non-negative up to tiny float noise (min -0.00052)
    np.testing.assert_allclose(spose.values[0, :3], [0.0088363392, 0.3013652262, 2.3528552055])


def test_spose_minmax_rescaling_is_an_option(spose):
    scaled = load_spose(rescale="minmax100")
    assert scaled.values.min() == 0 and scaled.values.max() == pytest.approx(100)
    # one global affine map: ratios of differences are kept across dimensions
    span = spose.values.max() - spose.values.min()
    np.testing.assert_allclose(scaled.values, (spose.values - spose.values.min()) * 100 / span)
    with pytest.raises(InputError, match="'rescale'"):
        load_spose(rescale="zscore")


def test_rdm48_ids_checked_against_words(concepts):
    rdm48 = load_rdm48()
    assert rdm48.n_concepts == 48
    assert rdm48.concept_ids[:3] == ("pizza", "beaver", "macadamia")
    # words48 says "camera": the index, read in official order, would say camera_lens
    assert "camera1" in rdm48.concept_ids and "camera_lens" not in rdm48.concept_ids
    raw_index = np.load(bundled_data_dir() / "triplet48_index.npy")
    official = [concepts.ids[i] for i in raw_index]
    assert [a for a, b in zip(official, rdm48.concept_ids, strict=True) if a != b] == [
        "camera_lens"
    ]
    square = rdm48.square()
    assert np.allclose(square, square.T) and np.all(np.diag(square) == 0)
    assert 0 <= np.nanmin(rdm48.condensed) and np.nanmax(rdm48.condensed) <= 0.99


def test_split_is_seeded_disjoint_and_never_touches_heldout():
    split = split_concepts(seed=3)
    assert (len(split.train_ids), len(split.val_ids), len(split.test_ids)) == (1445, 361, 48)
    train, val, test = map(set, (split.train_ids, split.val_ids, split.test_ids))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 1854
    assert test == set(load_rdm48().concept_ids)
    assert split_concepts(seed=3) == split
    assert split_concepts(seed=4).val_ids != split.val_ids
    with pytest.raises(InputError, match="val_fraction"):
        split_concepts(val_fraction=1.5)


def test_triplets_carry_ids():
    triplets = load_test_triplets()
    assert len(triplets) == 20000
    assert triplets.concept_ids.shape == (20000, 3)
    assert set(np.unique(triplets.odd_one_out)) == {0, 1, 2}
    assert triplets.index_order == "sorted_names"
    with pytest.raises(InputError, match="'index_order'"):
        load_test_triplets(index_order="sorted")


def test_bundled_triplets_are_indexed_in_sorted_order(spose, concepts):
    """The evidence behind index_order="auto" for the bundled file.

    Triplets touching the 20 reordered concepts are predicted as well as the others only when
    the file's numbers are read in sorted order.
    """
    sorted_reading = load_test_triplets(index_order="sorted_names")
    official_reading = load_test_triplets(index_order="unique_id")
    reordered = {c for c, s in zip(concepts.ids, sorted(concepts.ids), strict=True) if c != s}
    assert len(reordered) == 20 and all(c.startswith(REORDERED_PREFIXES) for c in reordered)
    touches = np.isin(official_reading.concept_ids, list(reordered)).any(axis=1)
    assert touches.sum() == 594
    hit_sorted = odd_one_out_predictions(spose, sorted_reading)
    hit_official = odd_one_out_predictions(spose, official_reading)
    assert hit_sorted[touches].mean() == pytest.approx(0.658, abs=5e-4)
    assert hit_official[touches].mean() == pytest.approx(0.449, abs=5e-4)
    assert hit_sorted[~touches].mean() == pytest.approx(0.642, abs=5e-4)
    # both readings agree on every other triplet
    np.testing.assert_array_equal(hit_sorted[~touches], hit_official[~touches])


@pytest.fixture
def user_data_dir(tmp_path):
    target = tmp_path / "things"
    shutil.copytree(bundled_data_dir(), target)
    return target


def test_user_data_dir_index_order_follows_file_content(user_data_dir):
    assert load_concepts(user_data_dir).ids == load_concepts().ids
    assert load_rdm48(user_data_dir).concept_ids == load_rdm48().concept_ids
    # the bundled triplet file is recognised by content wherever it lies ...
    assert load_test_triplets(user_data_dir).index_order == "sorted_names"
    # ... any other triplet file is read in official order (THINGS-data's convention)
    path = user_data_dir / "test_triplets.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:100]))
    other = load_test_triplets(user_data_dir)
    assert other.index_order == "unique_id" and len(other) == 100
    numbers = np.loadtxt(path, dtype=int)[:, :3]
    ids = np.array(load_concepts().ids)
    np.testing.assert_array_equal(other.concept_ids, ids[numbers - 1])


def test_user_data_dir_env_variable(user_data_dir, monkeypatch):
    (user_data_dir / "test_triplets.csv").write_text("1 2 3 1 7\n")
    monkeypatch.setenv("CLIP_HBA_THINGS_DIR", str(user_data_dir))
    triplets = load_test_triplets()
    assert triplets.index_order == "unique_id"
    assert triplets.concept_ids.tolist() == [["aardvark", "abacus", "accordion"]]
    assert triplets.odd_one_out.tolist() == [0] and triplets.subject.tolist() == [7]


def test_user_data_dir_errors_name_the_problem(user_data_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_concepts(tmp_path / "nowhere")
    (user_data_dir / "test_triplets.csv").unlink()
    with pytest.raises(InputError, match="no file test_triplets.csv"):
        load_test_triplets(user_data_dir)


def test_misordered_categories_file_is_rejected(user_data_dir):
    path = user_data_dir / "Categories_final_20200131.tsv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]  # swap aardvark and abacus
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(InputError, match="not in official order"):
        load_concepts(user_data_dir)


def test_a_damaged_things_file_is_one_clear_error(tmp_path):
    import shutil

    from clip_hba._validation import InputError
    from clip_hba.data import bundled_data_dir, load_rdm48

    data = shutil.copytree(bundled_data_dir(), tmp_path / "things")
    (data / "RDM48_triplet.mat").write_bytes(b"")
    with pytest.raises(InputError, match="damaged or truncated.*--data-dir"):
        load_rdm48(data)
