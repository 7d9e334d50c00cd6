"""Importers: THINGS-MEG release files (with NaN triangles), .npy arrays, MNE epochs and BIDS."""

import json

import h5py
import numpy as np
import pytest

from clip_hba._validation import InputError
from clip_hba.meg import (
    BidsEpoching,
    EpochsConfig,
    RDMStore,
    StoreWriter,
    condition_rdms,
    epochs_rdms,
    export_things_mat,
    import_bids,
    import_epochs,
    import_npy,
    import_rdms,
    import_things_mat,
    write_things_mat,
)
from clip_hba.rsa import rdm, to_condensed, to_square

IDS = ["aardvark", "abacus", "accordion", "acorn", "air_conditioner", "air_mattress"]


def random_rdms(rng, n_participants, n_times, n):
    return rng.uniform(40, 90, size=(n_participants, n_times, n * (n - 1) // 2)).astype(np.float32)


def test_square_to_condensed_takes_the_defined_half():
    square = np.array(
        [[np.nan, 1.0, np.nan], [np.nan, np.nan, np.nan], [2.0, 3.0, np.nan]]
    )  # (0,1) upper; (0,2) and (1,2) only lower; nothing else
    for policy in ("average", "upper", "lower", "raise"):
        np.testing.assert_array_equal(to_condensed(square, asymmetry=policy), [1.0, 2.0, 3.0])
    both = np.array([[0, 1.0, 4.0], [3.0, 0, np.nan], [np.nan, np.nan, 0]])
    out = to_condensed(both, asymmetry="average")
    assert out[0] == 2.0 and out[1] == 4.0 and np.isnan(out[2])  # mean; upper; missing
    assert to_condensed(both, asymmetry="upper")[0] == 1.0
    assert to_condensed(both, asymmetry="lower")[0] == 3.0
    with pytest.raises(InputError, match=r"not symmetric: \[0, 1\] = 1 but \[1, 0\] = 3"):
        to_condensed(both)  # the default policy refuses two values for one pair
    float32 = to_condensed(both.astype(np.float32), asymmetry="average")
    assert float32.dtype == np.float32  # importers stream float32 RDMs without a copy
    with pytest.raises(InputError, match="Allowed values are 'raise', 'average'"):
        to_condensed(both, asymmetry="mean")


@pytest.mark.parametrize("lower_nan", [True, False])
def test_release_round_trip_with_nan_triangles(tmp_path, rng, lower_nan):
    values = random_rdms(rng, 2, 7, len(IDS))
    values[1, 3, 4] = np.nan  # a pair missing in both halves stays missing
    source = tmp_path / "source.h5"
    with StoreWriter(source, IDS, ["P1", "P2"], np.arange(7) * 5.0 - 10) as writer:
        for p in range(2):
            writer.write_block(p, 0, values[p])
    mat = export_things_mat(source, tmp_path / "release.mat", lower_nan=lower_nan, verbose=False)
    with h5py.File(mat) as handle:
        assert handle["mat"].shape == (2, 7, 6, 6)
        square = handle["mat"][0, 0]
        assert np.isnan(np.diag(square)).all()
        assert np.isnan(square[np.tril_indices(6, -1)]).all() == lower_nan
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    imported = import_things_mat(
        mat, tmp_path / "imported.h5", concept_ids=IDS, times_ms="-10:5", verbose=False
    )
    with RDMStore(imported) as store:
        np.testing.assert_array_equal(store.read().values, values)
        assert store.participant_ids == ("P1", "P2")
        np.testing.assert_array_equal(store.times_ms, np.arange(7) * 5.0 - 10)


def test_release_reads_the_lower_triangle_too(tmp_path, rng):
    """MATLAB's column-major layout puts the filled triangle in h5py's lower half."""
    upper = random_rdms(rng, 1, 3, 4)
    i, j = np.triu_indices(4, k=1)

    def squares():
        for t in range(3):
            square = np.full((4, 4), np.nan, dtype=np.float32)
            square[j, i] = upper[0, t]
            yield 0, t, square

    mat = write_things_mat(tmp_path / "r.mat", (1, 3, 4, 4), squares(), verbose=False)
    store = import_things_mat(
        mat, tmp_path / "s.h5", concept_ids=IDS[:4], times_ms=[0, 5, 10], verbose=False
    )
    with RDMStore(store) as opened:
        np.testing.assert_array_equal(opened.read().values, upper)


def test_release_needs_ids_unless_it_has_the_things_concepts(tmp_path):
    mat = tmp_path / "r.mat"
    with h5py.File(mat, "w") as handle:
        handle.create_dataset("mat", shape=(1, 281, 5, 5), dtype="f4")
    with pytest.raises(InputError, match="holds 5 concepts, not the 1854 THINGS concepts"):
        import_things_mat(mat, tmp_path / "s.h5", verbose=False)


def test_release_bad_inputs(tmp_path):
    mat = tmp_path / "r.mat"
    with h5py.File(mat, "w") as handle:
        handle.create_dataset("mat", data=np.ones((1, 4, 3, 3), dtype="f4"))
    with pytest.raises(InputError, match="no variable 'rdm'"):
        import_things_mat(mat, tmp_path / "s.h5", variable="rdm", concept_ids=IDS[:3])
    with pytest.raises(InputError, match="time axis has 3 timepoints but the data have 4"):
        import_things_mat(mat, tmp_path / "s.h5", concept_ids=IDS[:3], times_ms=[0, 1, 2])
    with pytest.raises(InputError, match="holds 3 concepts but 2 concept ids"):
        import_things_mat(mat, tmp_path / "s.h5", concept_ids=IDS[:2], times_ms="0:5")
    old = tmp_path / "old.mat"
    old.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(InputError, match="save it with -v7.3"):
        import_things_mat(old, tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("layout", ["PTNN", "TNN", "PTpairs", "Tpairs"])
def test_npy_layouts(tmp_path, rng, layout):
    n = 5
    values = random_rdms(rng, 2, 4, n)
    squares = np.stack([[to_square(v) for v in participant] for participant in values])
    array = {
        "PTNN": squares,
        "TNN": squares[0],
        "PTpairs": values,
        "Tpairs": values[0],
    }[layout]
    source = tmp_path / "rdms.npy"
    np.save(source, array)
    store = import_npy(
        source, tmp_path / "s.h5", concept_ids=IDS[:n], times_ms="0:10", verbose=False
    )
    expected = values if layout.startswith("P") else values[:1]
    with RDMStore(store) as opened:
        np.testing.assert_allclose(opened.read().values, expected, rtol=1e-6)
        np.testing.assert_array_equal(opened.times_ms, [0, 10, 20, 30])


def test_npy_sidecar_gives_ids_times_and_participants(tmp_path, rng):
    values = random_rdms(rng, 2, 3, 4)
    np.save(tmp_path / "rdms.npy", values)
    sidecar = {"concept_ids": IDS[:4], "times_ms": [0, 5, 10], "participant_ids": ["x", "y"]}
    (tmp_path / "rdms.json").write_text(json.dumps(sidecar))
    store = import_npy(tmp_path / "rdms.npy", tmp_path / "s.h5", verbose=False)
    with RDMStore(store) as opened:
        assert opened.participant_ids == ("x", "y")
        assert opened.concept_ids == tuple(IDS[:4])


def test_npy_bad_inputs(tmp_path, rng):
    np.save(tmp_path / "rdms.npy", random_rdms(rng, 1, 3, 4))
    with pytest.raises(InputError, match="No concept ids"):
        import_npy(tmp_path / "rdms.npy", tmp_path / "s.h5")
    with pytest.raises(InputError, match="No time axis"):
        import_npy(tmp_path / "rdms.npy", tmp_path / "s.h5", concept_ids=IDS[:4])
    with pytest.raises(InputError, match="expected START:STEP"):
        import_npy(tmp_path / "rdms.npy", tmp_path / "s.h5", concept_ids=IDS[:4], times_ms="x")
    np.save(tmp_path / "odd.npy", np.ones((3, 7)))
    with pytest.raises(InputError, match=r"shape \(3, 7\); accepted are .*N\*\(N-1\)/2"):
        import_npy(tmp_path / "odd.npy", tmp_path / "s.h5", times_ms="0:5")
    np.save(tmp_path / "nan.npy", np.full((2, 6), np.nan))
    with pytest.raises(InputError, match="no data at 0 ms"):
        import_npy(tmp_path / "nan.npy", tmp_path / "s.h5", concept_ids=IDS[:4], times_ms="0:5")
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------------------- MNE / BIDS


def planted_epochs(rng, n_conditions=6, repeats=8, n_channels=16, sfreq=200.0, n_times=24):
    """Epochs whose condition patterns (known RDM) appear after 0 ms, under noise."""
    patterns = rng.normal(size=(n_conditions, n_channels))
    times = np.arange(n_times) / sfreq - 0.04
    onset = (times >= 0).astype(float)
    labels = np.repeat(np.arange(n_conditions), repeats)
    data = patterns[labels][:, :, None] * onset * 1.5 + rng.normal(
        size=(len(labels), n_channels, n_times)
    )
    runs = np.tile(np.arange(repeats), n_conditions) % 2
    # the correlation RDM z-scores each sensor across conditions first
    standardized = (patterns - patterns.mean(0)) / patterns.std(0)
    return data, labels, runs, times, rdm(standardized, "pearson")


def test_condition_rdms_recover_a_planted_structure(rng):
    data, labels, _, times, truth = planted_epochs(rng)
    conditions = [IDS[k] for k in labels]
    rdms = condition_rdms(data, conditions, times * 1000)
    assert rdms.concept_ids == tuple(IDS)  # THINGS concepts in official order
    after = rdms.times_ms >= 0
    r_after = [np.corrcoef(v, truth)[0, 1] for v in rdms.values[after]]
    r_before = [np.corrcoef(v, truth)[0, 1] for v in rdms.values[~after]]
    assert np.mean(r_after) > 0.8
    assert abs(np.mean(r_before)) < 0.3


def test_decoding_rdms_with_run_folds(rng):
    data, labels, runs, times, _truth = planted_epochs(rng, n_conditions=4, n_times=12)
    conditions = [IDS[k] for k in labels]
    config = EpochsConfig(method="decoding", bin_ms=10)
    rdms = condition_rdms(data, conditions, times * 1000, config, groups=runs)
    assert rdms.values.shape == (6, 6)  # 12 samples at 5 ms in 10 ms bins; 6 pairs
    after = rdms.times_ms > 0
    assert rdms.values[after].mean() > 85  # accuracy in %
    assert 30 < rdms.values[~after].mean() < 70  # chance before onset


def make_mne_epochs(rng, metadata=False):
    import mne

    data, labels, runs, times, truth = planted_epochs(rng)
    info = mne.create_info(data.shape[1], 200.0, "mag")
    events = np.column_stack([np.arange(len(labels)) * 300, np.zeros_like(labels), labels + 1])
    event_id = {IDS[k]: k + 1 for k in range(6)}
    frame = None
    if metadata:
        import pandas as pd

        frame = pd.DataFrame({"concept": [IDS[k] for k in labels], "run": runs})
        events[:, 2] = 1
        event_id = {"image": 1}
    epochs = mne.EpochsArray(
        data * 1e-13,
        info,
        events,
        tmin=times[0],
        event_id=event_id,
        metadata=frame,
        verbose="error",
    )
    return epochs, truth


def test_epochs_rdms_from_event_names_and_metadata(rng):
    epochs, truth = make_mne_epochs(rng)
    by_name = epochs_rdms(epochs)
    assert by_name.concept_ids == tuple(IDS)
    assert np.corrcoef(by_name.values[-1], truth)[0, 1] > 0.7
    epochs_meta, _ = make_mne_epochs(np.random.default_rng(1234), metadata=True)
    by_column = epochs_rdms(epochs_meta, concept_column="concept")
    np.testing.assert_allclose(by_column.values, by_name.values, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no metadata column 'nope'"):
        epochs_rdms(epochs_meta, concept_column="nope")


def test_import_epochs_files_into_one_store(tmp_path, rng):
    first, _ = make_mne_epochs(rng)
    second, _ = make_mne_epochs(rng)
    second = second[[k for k, e in enumerate(second.events[:, 2]) if e != 6]]  # no condition 6
    paths = [tmp_path / "sub-01-epo.fif", tmp_path / "sub-02-epo.fif"]
    first.save(paths[0], verbose="error")
    second.save(paths[1], verbose="error")
    store = import_epochs(paths, tmp_path / "s.h5", verbose=False)
    with RDMStore(store) as opened:
        assert opened.participant_ids == ("01", "02")
        assert opened.concept_ids == tuple(IDS)
        values = opened.read().values
    assert not np.isnan(values[0]).any()
    missing = [
        k for k, (a, b) in enumerate(zip(*np.triu_indices(6, 1), strict=True)) if 5 in (a, b)
    ]
    assert np.isnan(values[1][:, missing]).all()
    assert not np.isnan(np.delete(values[1], missing, axis=1)).any()


def test_import_bids_dataset(tmp_path, rng):
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    sfreq, n_channels = 200.0, 16
    patterns = rng.normal(size=(4, n_channels))
    root = tmp_path / "bids"
    for subject in ("01", "02"):
        for run in (1, 2):
            n_events = 12
            onsets = 1.0 + np.arange(n_events) * 0.5
            labels = np.tile(np.arange(4), 3)
            signal = rng.normal(size=(n_channels, int(sfreq * (onsets[-1] + 1.5))))
            for onset, label in zip(onsets, labels, strict=True):
                start = round(onset * sfreq)
                signal[:, start : start + 40] += 3 * patterns[label][:, None]
            raw = mne.io.RawArray(
                signal * 1e-13, mne.create_info(n_channels, sfreq, "mag"), verbose="error"
            )
            raw.set_meas_date(None)
            events = np.column_stack(
                [np.round(onsets * sfreq).astype(int), np.zeros(n_events, int), labels + 1]
            )
            path = BIDSPath(subject=subject, task="things", run=run, datatype="meg", root=root)
            write_raw_bids(
                raw,
                path,
                events=events,
                event_id={f"images/{IDS[k]}/{IDS[k]}_01b.jpg": k + 1 for k in range(4)},
                allow_preload=True,
                format="FIF",
                verbose="error",
            )
    epoching = BidsEpoching(concept_pattern=r"images/([^/]+)/", tmin_s=-0.05, tmax_s=0.2)
    store = import_bids(root, tmp_path / "s.h5", epoching=epoching, verbose=False)
    with RDMStore(store) as opened:
        assert opened.participant_ids == ("01", "02")
        assert opened.concept_ids == tuple(IDS[:4])
        mean = opened.mean(window_ms=(20, 150)).values.mean(0)
    standardized = (patterns - patterns.mean(0)) / patterns.std(0)
    assert np.corrcoef(mean, rdm(standardized, "pearson"))[0, 1] > 0.8


# ---------------------------------------------------------------------------- bad files, policies


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty or truncated (0 bytes)"),
        (bytes(range(256)) * 2, "is not a valid .npy file"),
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'", "is empty or truncated"),
    ],
    ids=["empty", "random-bytes", "truncated-header"],
)
def test_npy_unreadable_files_are_named(tmp_path, content, message):
    (tmp_path / "bad.npy").write_bytes(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        import_npy(tmp_path / "bad.npy", tmp_path / "s.h5", concept_ids=IDS[:4], times_ms="0:5")
    assert "allow_pickle" not in str(err.value)


def test_npy_truncated_data_objects_and_strings_are_refused(tmp_path):
    np.save(tmp_path / "full.npy", np.ones((2, 6)))
    (tmp_path / "short.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:150])
    with pytest.raises(InputError, match="short.npy is empty or truncated"):
        import_npy(tmp_path / "short.npy", tmp_path / "s.h5")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects, not numbers"):
        import_npy(tmp_path / "objects.npy", tmp_path / "s.h5")
    np.save(tmp_path / "words.npy", np.array([["a", "b", "c"]]))
    with pytest.raises(InputError, match="holds <U1 values; RDMs must be real numbers"):
        import_npy(tmp_path / "words.npy", tmp_path / "s.h5")
    with pytest.raises(InputError, match="No such file"):
        import_npy(tmp_path / "missing.npy", tmp_path / "s.h5")


def test_npy_one_square_rdm_is_told_the_accepted_shapes(tmp_path, rng):
    np.save(tmp_path / "one.npy", to_square(rng.random(40 * 39 // 2)))  # (40, 40): 40 values
    with pytest.raises(InputError, match=r"shape \(40, 40\); accepted are \(P, T, N, N\)") as err:
        import_npy(tmp_path / "one.npy", tmp_path / "s.h5", concept_ids=IDS[:4], times_ms="0:5")
    assert "save it as (1, N, N)" in str(err.value)
    # (6, 6) also reads as 6 timepoints of 4 concepts (6 pairs): say so when the ids disagree
    np.save(tmp_path / "six.npy", to_square(rng.random(15)))
    with pytest.raises(InputError, match=r"holds 4 concepts but 6 .* \(read as \(T, n_pairs\)"):
        import_npy(tmp_path / "six.npy", tmp_path / "s.h5", concept_ids=IDS, times_ms="0:5")
    np.save(tmp_path / "one3d.npy", to_square(rng.random(15))[None])
    store = import_npy(
        tmp_path / "one3d.npy", tmp_path / "s.h5", concept_ids=IDS, times_ms="0:5", verbose=False
    )
    with RDMStore(store) as opened:
        assert opened.read().values.shape == (1, 1, 15)


def test_npy_asymmetric_squares_need_a_policy(tmp_path, rng):
    values = random_rdms(rng, 1, 2, 4)
    squares = np.stack([to_square(v) for v in values[0]])
    squares[1, 2, 0] += 10.0  # [2, 0] differs from [0, 2] at the second timepoint
    squares[0, 1, 3] *= 1 + 1e-7  # float round-off: still symmetric
    np.save(tmp_path / "asym.npy", squares)
    kwargs = dict(concept_ids=IDS[:4], times_ms="0:5", verbose=False)
    with pytest.raises(InputError) as err:
        import_npy(tmp_path / "asym.npy", tmp_path / "s.h5", **kwargs)
    message = str(err.value)
    assert "participant 'P1' at 5 ms" in message and "not symmetric: [0, 2]" in message
    assert "a difference of 10" in message and "% of the largest |value|" in message
    assert "--asymmetric average|upper|lower" in message
    assert not (tmp_path / "s.h5").exists()
    upper, lower = squares[1, 0, 2], squares[1, 2, 0]
    for policy, expected in (("average", (upper + lower) / 2), ("upper", upper), ("lower", lower)):
        out = tmp_path / f"{policy}.h5"
        import_npy(tmp_path / "asym.npy", out, asymmetry=policy, **kwargs)
        with RDMStore(out) as opened:
            assert opened.read().values[0, 1, 1] == pytest.approx(expected, rel=1e-6)


def test_release_asymmetric_squares_need_a_policy(tmp_path):
    mat = tmp_path / "r.mat"
    square = to_square(np.array([1.0, 2.0, 3.0]))
    square[1, 0] = 5.0
    with h5py.File(mat, "w") as handle:
        handle.create_dataset("mat", data=square[None, None].astype("f4"))
    with pytest.raises(InputError, match=r"participant 'P1' at 0 ms .* not symmetric: \[0, 1\]"):
        import_things_mat(mat, tmp_path / "s.h5", concept_ids=IDS[:3], times_ms="0:5")
    import_things_mat(
        mat, tmp_path / "s.h5", concept_ids=IDS[:3], times_ms="0:5", asymmetry="average"
    )
    with RDMStore(tmp_path / "s.h5") as opened:
        np.testing.assert_array_equal(opened.read().values[0, 0], [3.0, 2.0, 3.0])


@pytest.mark.parametrize("kind", ["npy", "mat"])
def test_infinite_values_are_refused_or_stored_as_nan(tmp_path, rng, kind):
    values = random_rdms(rng, 2, 3, 4)
    values[1, 2, [0, 4]] = np.inf
    values[0, 1, 3] = -np.inf
    squares = np.stack([[to_square(v) for v in participant] for participant in values])
    source = tmp_path / f"rdms.{kind}"
    if kind == "npy":
        np.save(source, squares)
        importer = import_npy
    else:
        with h5py.File(source, "w") as handle:
            handle.create_dataset("mat", data=squares.astype("f4"))
        importer = import_things_mat
    kwargs = dict(concept_ids=IDS[:4], times_ms="0:5", verbose=False)
    with pytest.raises(InputError) as err:
        importer(source, tmp_path / "s.h5", **kwargs)
    message = str(err.value)
    assert "3 pair(s) with an infinite dissimilarity in 2 RDM(s)" in message
    assert "participant 'P1' at 5 ms, pair ('abacus', 'accordion')" in message
    assert "--inf-as-nan" in message
    assert not (tmp_path / "s.h5").exists()
    importer(source, tmp_path / "s.h5", inf_as_nan=True, **kwargs)
    with RDMStore(tmp_path / "s.h5") as opened:
        stored = opened.read().values
        info = opened.info()
    assert np.isnan(stored[1, 2, [0, 4]]).all() and np.isnan(stored[0, 1, 3])
    assert info["n_inf_as_nan"] == 3 and info["n_inf"] == 0
    assert info["nan_share"] == pytest.approx(3 / values.size)


def test_epochs_with_infinite_samples_are_refused(rng):
    data, labels, _, times, _ = planted_epochs(rng)
    data[3, 2, 5] = np.inf
    conditions = [IDS[k] for k in labels]
    with pytest.raises(InputError, match=r"1 NaN or infinite sample\(s\), the first in epoch 3"):
        condition_rdms(data, conditions, times * 1000)
    with pytest.raises(InputError, match="channel 2, sample 5"):
        condition_rdms(data, conditions, times * 1000, EpochsConfig(method="decoding"))


def test_mixed_things_and_unknown_ids_warn(tmp_path, rng, caplog):
    np.save(tmp_path / "rdms.npy", random_rdms(rng, 1, 2, 6))
    mixed = [*IDS[:4], "aardvak", "my_object"]
    with caplog.at_level("WARNING", logger="clip_hba.meg.writer"):
        store = import_npy(
            tmp_path / "rdms.npy", tmp_path / "s.h5", concept_ids=mixed, times_ms="0:5"
        )
    warning = caplog.text
    assert "2 of its 6 concept ids are not THINGS concepts" in warning
    assert "'aardvak', 'my_object'" in warning
    with RDMStore(store) as opened:
        assert opened.info(nan_share=False)["unknown_concepts"] == {
            "n": 2,
            "first": ["aardvak", "my_object"],
        }
    caplog.clear()
    with caplog.at_level("WARNING", logger="clip_hba.meg.writer"):
        for k, ids in enumerate([IDS, [f"stim{k}" for k in range(6)]]):
            store = import_npy(
                tmp_path / "rdms.npy", tmp_path / f"{k}.h5", concept_ids=ids, times_ms="0:5"
            )
            with RDMStore(store) as opened:
                assert "unknown_concepts" not in opened.info(nan_share=False)
    assert caplog.text == ""  # all THINGS, or none: silent


def test_export_writes_a_sidecar_that_imports_back(tmp_path, rng):
    values = random_rdms(rng, 2, 4, 5)
    ids = ["s1", "s2", "s3", "s4", "s5"]
    source = tmp_path / "source.h5"
    times = [-12.5, -2.5, 7.5, 17.5]
    with StoreWriter(source, ids, ["ann", "bob"], times, attrs={"kind": "rdm"}) as writer:
        for p in range(2):
            writer.write_block(p, 0, values[p])
    mat = export_things_mat(source, tmp_path / "x.mat", variable="rdm", verbose=False)
    sidecar = json.loads((tmp_path / "x.json").read_text())
    assert sidecar == {
        "concept_ids": ids,
        "participant_ids": ["ann", "bob"],
        "times_ms": times,
        "variable": "rdm",
        "kind": "rdm",
    }
    store = import_things_mat(mat, tmp_path / "back.h5", verbose=False)
    with RDMStore(store) as opened:
        assert opened.concept_ids == tuple(ids)
        assert opened.participant_ids == ("ann", "bob")
        assert opened.attrs["kind"] == "rdm"
        np.testing.assert_array_equal(opened.times_ms, times)
        np.testing.assert_array_equal(opened.read().values, values)
    with pytest.raises(InputError, match="x.json exists; use --force"):
        (tmp_path / "x.mat").unlink()
        export_things_mat(source, tmp_path / "x.mat", force=False, verbose=False)
    with pytest.raises(InputError, match="ending in .mat"):  # so the sidecar never is --out
        export_things_mat(source, tmp_path / "x.json", verbose=False)


def test_out_directory_is_refused_up_front(tmp_path, rng):
    np.save(tmp_path / "rdms.npy", random_rdms(rng, 1, 2, 4))
    (tmp_path / "dir").mkdir()
    for force in (False, True):
        with pytest.raises(InputError, match="is a directory; --out must be the path of the file"):
            import_rdms(
                [tmp_path / "rdms.npy"],
                tmp_path / "dir",
                concept_ids=IDS[:4],
                times_ms="0:5",
                force=force,
            )
