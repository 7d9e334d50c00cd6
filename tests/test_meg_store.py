"""The MEG RDM store: layout, streamed selections and means, refusal of bad or partial files."""

import h5py
import numpy as np
import pytest

from clip_hba._validation import InputError
from clip_hba.meg import RDMStore, StoreWriter, participant_quality
from clip_hba.meg import store as meg
from clip_hba.rsa import pair_index

IDS = [f"c{k:02d}" for k in range(12)]
TIMES = np.arange(-20.0, 80.0, 5.0)  # 20 timepoints
PARTICIPANTS = ["A", "B", "C"]


@pytest.fixture(scope="module")
def data():
    """(P, T, pairs) with NaNs: some pairs missing for one participant, one pair for everyone."""
    rng = np.random.default_rng(0)
    values = rng.normal(50, 5, size=(3, len(TIMES), 66)).astype(np.float32)
    values[1, :, :5] = np.nan
    values[:, :, 10] = np.nan
    return values


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("store") / "store.h5"
    with StoreWriter(path, IDS, PARTICIPANTS, TIMES, attrs={"kind": "test"}) as writer:
        for p in range(3):
            writer.write_block(p, 0, data[p, :7])
            writer.write_block(p, 7, data[p, 7:])
    return path


def test_layout_chunks_one_timepoint_and_keeps_axes(store_path):
    with h5py.File(store_path) as handle:
        assert handle["rdm"].shape == (3, 20, 66)
        assert handle["rdm"].chunks == (1, 1, 66)
        assert handle.attrs["complete"]
    with RDMStore(store_path) as store:
        assert store.concept_ids == tuple(IDS)
        assert store.participant_ids == tuple(PARTICIPANTS)
        np.testing.assert_array_equal(store.times_ms, TIMES)
        info = store.info()
    assert info["n_concepts"] == 12 and info["n_times"] == 20 and info["kind"] == "test"
    assert info["times_ms"] == {"start": -20.0, "stop": 75.0, "step": 5.0}
    assert info["nan_share"] == pytest.approx((20 * 5 + 3 * 20) / (3 * 20 * 66))


def test_read_selects_window_concepts_and_participants(store_path, data):
    chosen = ["c07", "c02", "c11", "c05"]
    with RDMStore(store_path) as store:
        read = store.read(window_ms=(0, 30), concept_ids=chosen, participants=["C", "A"])
    rows = np.array([IDS.index(c) for c in chosen])
    i, j = np.triu_indices(4, k=1)
    pairs = pair_index(rows[i], rows[j], 12)
    times = (TIMES >= 0) & (TIMES <= 30)
    np.testing.assert_array_equal(read.values, data[[2, 0]][:, times][:, :, pairs])
    assert read.concept_ids == tuple(chosen)
    assert read.participant_ids == ("C", "A")
    np.testing.assert_array_equal(read.times_ms, TIMES[times])


def test_streamed_mean_equals_in_memory_nanmean(store_path, data, monkeypatch):
    monkeypatch.setattr(meg, "READ_BYTES", 2 * 66 * 4 * 3)  # two timepoints per batch
    with RDMStore(store_path) as store:
        mean = store.mean(exclude=["B"])
        mean_all = store.mean()
    np.testing.assert_allclose(mean.values, data[[0, 2]].mean(0), rtol=1e-6)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmean(data, axis=0)
    np.testing.assert_allclose(mean_all.values, expected, rtol=1e-6)
    assert np.isnan(mean_all.values[:, 10]).all()  # missing for everyone stays missing
    assert mean_all.participant_ids is None


def test_iter_times_streams_batches(store_path, monkeypatch):
    monkeypatch.setattr(meg, "READ_BYTES", 3 * 66 * 4)  # 3 timepoints of one participant
    with RDMStore(store_path) as store:
        batches = [rows for rows, _ in store.iter_times(participants=["A"])]
    assert [len(b) for b in batches] == [3, 3, 3, 3, 3, 3, 2]
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(20))


def test_at_returns_an_rdm(store_path, data):
    with RDMStore(store_path) as store:
        read = store.read(participants=["A"])
    rdm_ = read.at(12.0, "A")  # nearest timepoint: 10 ms
    np.testing.assert_allclose(rdm_.condensed, data[0, list(TIMES).index(10.0)])


def test_float16_storage(tmp_path):
    path = tmp_path / "half.h5"
    with StoreWriter(path, IDS[:4], ["A"], [0.0], dtype="float16") as writer:
        writer.write(0, 0, [0.5, 0.25, 1.0, 2.0, 3.0, 4.0])
    with RDMStore(path) as store:
        assert store.dtype == "float16"
        np.testing.assert_array_equal(store.read().values[0, 0], [0.5, 0.25, 1, 2, 3, 4])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.read(participants=["Z"]), "Unknown participant id.s. 'Z'"),
        (lambda s: s.mean(exclude=["A", "B", "C"]), "No participants left"),
        (lambda s: s.read(window_ms=(200, 300)), "holds no timepoint"),
        (lambda s: s.read(window_ms=(30, 0)), "start > stop"),
        (lambda s: s.read(concept_ids=["c01", "nope"]), "not in"),
    ],
)
def test_bad_selections_are_one_clear_error(store_path, call, message):
    with RDMStore(store_path) as store, pytest.raises(InputError, match=message):
        call(store)


def test_interrupted_write_leaves_no_store(tmp_path):
    path = tmp_path / "partial.h5"
    with pytest.raises(RuntimeError), StoreWriter(path, IDS[:3], ["A"], [0.0, 5.0]) as writer:
        writer.write(0, 0, [1.0, 2.0, 3.0])
        raise RuntimeError("killed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_unfilled_store_is_refused_at_commit(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", IDS[:3], ["A"], [0.0, 5.0])
    writer.write(0, 0, [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="timepoint 5 ms has no data"):
        writer.commit()
    assert not (tmp_path / "s.h5").exists()


def test_incomplete_or_foreign_files_are_refused(tmp_path):
    partial = tmp_path / "partial.h5"
    with h5py.File(partial, "w") as handle:  # what a killed writer's temp file looks like
        handle.attrs.update({"format": meg.FORMAT, "format_version": 1, "complete": False})
    with pytest.raises(InputError, match="incomplete"):
        RDMStore(partial)
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = 1
    with pytest.raises(InputError, match="not a clip-hba RDM store"):
        RDMStore(foreign)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 RDM store"):
        RDMStore(text)
    with pytest.raises(InputError, match="No RDM store"):
        RDMStore(tmp_path / "missing.h5")


def test_nan_only_timepoint_is_refused(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", IDS[:3], ["A"], [0.0, 5.0])
    with pytest.raises(InputError, match="no data at 5 ms"):
        writer.write_block(0, 0, [[1.0, 2.0, 3.0], [np.nan] * 3])
    writer.abort()


@pytest.mark.parametrize(
    "ids, participants, times, message",
    [
        (["a", "b"], ["A"], [0.0], "at least 3 concepts"),
        (["a", "b", "a"], ["A"], [0.0], "repeats"),
        (["a", "b", "c"], ["A", "A"], [0.0], "Participant ids repeat"),
        (["a", "b", "c"], ["A"], [5.0, 0.0], "strictly increasing"),
    ],
)
def test_writer_checks_its_axes(tmp_path, ids, participants, times, message):
    with pytest.raises(InputError, match=message):
        StoreWriter(tmp_path / "s.h5", ids, participants, times)


def planted_store(path, noisy="D"):
    """Four participants sharing a structure after 0 ms, one of them (``noisy``) pure noise."""
    rng = np.random.default_rng(5)
    ids, times = IDS, np.arange(-20.0, 100.0, 10.0)
    shared = rng.normal(size=66)
    people = ["A", "B", "C", "D"]
    with StoreWriter(path, ids, people, times) as writer:
        for p, person in enumerate(people):
            signal = 0.0 if person == noisy else (times >= 0)[:, None] * shared
            writer.write_block(p, 0, (signal + rng.normal(size=(len(times), 66))).astype("f4"))
    return path


def test_participant_quality_flags_a_planted_outlier(tmp_path):
    with RDMStore(planted_store(tmp_path / "q.h5")) as store:
        quality = participant_quality(store, (0.0, 90.0))
    entries = quality["participants"]
    assert quality["flagged"] == ["D"] and entries["D"]["flagged"]
    assert "--exclude-participants D" in quality["advice"]
    assert entries["D"]["r_with_others"] < 0.2 < min(entries[p]["r_with_others"] for p in "ABC")
    shares = [entries[p]["share_of_ceiling"] for p in "ABCD"]
    assert np.mean(shares) == pytest.approx(1.0)  # shares of the lower noise ceiling
    with RDMStore(planted_store(tmp_path / "fine.h5", noisy=None)) as store:
        assert participant_quality(store, (0.0, 90.0))["flagged"] == []


@pytest.mark.parametrize(
    ("threads", "shape", "dtype"),
    [
        (1, (4, 3, 40_001), np.float32),
        (2, (4, 3, 40_001), np.float32),
        (3, (12, 2, 70_000), np.float64),  # order-sensitive: float64, wide magnitudes
        (2, (200, 1, 16_385), np.float64),  # many participants, an odd width
    ],
)
def test_the_noise_ceiling_sums_in_threads_are_the_same_bits(torch_threads, threads, shape, dtype):
    from clip_hba.meg import leave_one_out_correlations
    from clip_hba.meg import quality as q

    rng = np.random.default_rng(3)
    # magnitudes over 16 decades: a sum in any other order than numpy's gives other bits
    block = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-8, 8, shape)).astype(dtype)
    total_ref = block.sum(0, dtype=np.float64)
    assert not np.array_equal(total_ref, block[::-1].sum(0, dtype=np.float64))  # the check bites
    torch_threads(threads)
    total = q._sum_over_participants(block)
    means = q._leave_one_out_means(total, block)
    found = leave_one_out_correlations(block, "spearman")
    torch_threads(1)
    alone = leave_one_out_correlations(block, "spearman")
    np.testing.assert_array_equal(total, total_ref)
    np.testing.assert_array_equal(means, (total_ref - block) / (len(block) - 1))
    for threaded, single in zip(found, alone, strict=True):
        np.testing.assert_array_equal(threaded, single)


def test_infinite_values_are_refused_at_commit_naming_count_and_place(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", IDS[:3], ["A", "B"], [0.0, 5.0])
    writer.write_block(0, 0, [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    writer.write_block(1, 0, [[1.0, np.inf, 3.0], [-np.inf, np.inf, 3.0]])
    with pytest.raises(InputError) as err:
        writer.commit()
    message = str(err.value)
    assert "3 pair(s) with an infinite dissimilarity in 2 RDM(s)" in message
    assert "participant 'B' at 0 ms, pair ('c00', 'c02')" in message
    assert "--inf-as-nan" in message
    assert list(tmp_path.iterdir()) == []


def test_infinite_values_become_nan_when_asked_and_are_counted(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter(path, IDS[:3], ["A"], [0.0, 5.0], inf_as_nan=True) as writer:
        writer.write_block(0, 0, [[1.0, np.inf, 3.0], [1.0, 2.0, -np.inf]])
    with RDMStore(path) as store:
        info = store.info()
        values = store.read().values
    assert info["n_inf_as_nan"] == 2 and info["n_inf"] == 0
    assert info["nan_share"] == pytest.approx(2 / 6)
    assert np.isnan(values[0, 0, 1]) and np.isnan(values[0, 1, 2])
    with pytest.raises(InputError, match="no data at 0 ms"):  # all infinite: nothing left
        StoreWriter(tmp_path / "t.h5", IDS[:3], ["A"], [0.0], inf_as_nan=True).write(
            0, 0, [np.inf] * 3
        )


def test_info_counts_infinite_values_of_older_stores(store_path, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(store_path.read_bytes())
    with h5py.File(old, "r+") as handle:  # written before infinite values were refused
        handle["rdm"][0, 0, 0] = np.inf
        del handle.attrs["n_inf_as_nan"]
    with RDMStore(old) as store:
        info = store.info()
    assert info["n_inf"] == 1 and info["n_inf_as_nan"] == 0


def test_float16_overflow_is_refused(tmp_path):
    writer = StoreWriter(tmp_path / "half.h5", IDS[:3], ["A"], [0.0], dtype="float16")
    with pytest.raises(InputError, match=r"exceed the range of float16 .*\(--dtype float32\)"):
        writer.write(0, 0, [1.0, 1e6, 2.0])
    writer.abort()


def test_own_stimulus_sets_with_common_words_are_not_flagged():
    from clip_hba.meg.store import unknown_concepts

    assert unknown_concepts(["dog", "my_face_1", "my_face_2"]) == []  # mostly another set
    assert unknown_concepts(["dog", "cat", "banana", "bananna"]) == ["bananna"]  # a typo
