"""Time time-resolved RSA against rsatoolbox, mne-rsa and scipy on the same arrays, in one process.

A simulated store (``clip-hba simulate meg``; 300 concepts, 4 participants, 281 timepoints by
default, kept in ``--workdir`` and reused) and one static model RDM (the bundled SPoSE embedding,
1 - Pearson, over the store's concepts). Two measurements:

- the correlation core: every participant's RDM and the participants' mean RDM at every timepoint,
  ((P + 1) x T, n_pairs) float64, against the model RDM (Spearman), by our `correlate`,
  `rsatoolbox.rdm.compare(..., method="spearman")`, `mne_rsa.rsa(..., metric="spearman")` and a
  loop of `scipy.stats.spearmanr`; the largest absolute difference from ours is reported;
- end to end from the store: `time_resolved_rsa` (curves, leave-one-out noise ceiling and, with
  ``--permutations``, the cluster tests), against the same pipeline built from rsatoolbox's
  `compare` (the store read the same way, the same means, the same permutations and our
  `cluster_permutation_test`, so clusters and p-values must be identical).

Peers that are not installed are skipped with a note. Prints one JSON line: each tool's seconds
(``*_s``), ``max_abs_diff``, and the ratios (``ours_over_<peer>``, ``end_to_end_over_core``);
``numpy_disabled`` where numpy's AVX-512 kernels were turned off (AMD Zen 4: `clip_hba.cpu`).
Usage: python benchmarks/rsa_peers.py [--concepts 300] [--times 281] [--participants 4]
[--permutations 1000] [--threads 2] [--workdir DIR] [--skip scipy ...]
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> str | None:
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


# BLAS reads its thread count when numpy is first imported, so this precedes the imports below
_THREADS = _threads_from_argv(sys.argv[1:])
if _THREADS is not None:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_name] = _THREADS

from clip_hba.cpu import use_avx2_sorts  # noqa: E402

use_avx2_sorts()  # as the command line does, for ours and the peers alike (AMD Zen 4 only)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from clip_hba.data import load_spose  # noqa: E402
from clip_hba.evaluation import ModelRDMs, TimeRSAConfig, time_resolved_rsa  # noqa: E402
from clip_hba.meg import RDMStore, SimulationConfig, simulate_meg  # noqa: E402
from clip_hba.rsa import cluster_permutation_test, correlate, mean_rdm, pair_index  # noqa: E402

PEERS = ("rsatoolbox", "mne_rsa", "scipy")


def timed(function: Callable[..., Any], *args: Any, repeats: int = 1) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls (seconds) and the last value."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        value = function(*args)
        best = min(best, time.perf_counter() - started)
    return best, value


def prefault(n_bytes: int) -> None:
    """Touch and free ``n_bytes`` of memory once.

    On some (virtual) machines a process's first touch of fresh memory costs several ms per MB;
    doing it once, before any timing, keeps that cost out of whichever tool is timed first.
    """
    np.ones(n_bytes // 8).fill(2.0)


def store_path(workdir: Path, args: argparse.Namespace) -> tuple[Path, float | None]:
    """The simulated store for these sizes: reused from ``workdir`` or simulated (timed)."""
    path = workdir / f"sim_c{args.concepts}_p{args.participants}_t{args.times}.h5"
    if path.is_file():
        return path, None
    config = SimulationConfig(
        n_concepts=args.concepts,
        n_participants=args.participants,
        tmin_ms=-100.0,
        tmax_ms=-100.0 + 5.0 * (args.times - 1),
        seed=0,
    )
    seconds, _ = timed(lambda: simulate_meg(path, config, verbose=False))
    return path, seconds


# ---------------------------------------------------------------------------- the peers


def rsatoolbox_spearman(rows: np.ndarray, models: np.ndarray) -> np.ndarray:
    """(R, n_pairs) x (M, n_pairs) -> (R, M) Spearman, by `rsatoolbox.rdm.compare`."""
    from rsatoolbox.rdm import RDMs, compare

    return compare(RDMs(rows), RDMs(models), method="spearman")


def mne_rsa_spearman(rows: np.ndarray, model: np.ndarray) -> np.ndarray:
    import mne_rsa

    return np.asarray(mne_rsa.rsa(list(rows), model, metric="spearman"))


def scipy_spearman(rows: np.ndarray, model: np.ndarray) -> np.ndarray:
    return np.array([stats.spearmanr(row, model).statistic for row in rows])


def rsatoolbox_pipeline(
    path: Path, model: np.ndarray, n_permutations: int, seed: int
) -> dict[str, Any]:
    """Curves, leave-one-out noise ceiling and cluster tests, every correlation by rsatoolbox.

    The permutations are drawn as `time_resolved_rsa` draws them (one seeded relabelling of the
    concepts each, the same at every timepoint), and the null curves are kept in float32 as
    ours are, so that both pipelines' cluster tests see the same numbers.
    """
    with RDMStore(path) as store:
        n = len(store.concept_ids)
        times = store.times_ms
        rng = np.random.default_rng(seed)
        u, v = np.triu_indices(n, k=1)
        permuted = [model]
        for _ in range(n_permutations):
            order = rng.permutation(n)
            permuted.append(model[pair_index(order[u], order[v], n)])
        models = np.stack(permuted)  # (1 + K, n_pairs)
        curves, nulls, lower, upper = [], [], [], []
        for _rows, block in store.iter_times(batch_bytes=256 << 20):
            n_p, n_t = block.shape[:2]
            mean = mean_rdm(block)
            targets = np.concatenate([mean[None], block]).reshape(-1, block.shape[-1])
            r = rsatoolbox_spearman(targets, models).reshape(n_p + 1, n_t, len(models))
            curves.append(r[..., 0])
            nulls.append(r[..., 1:].astype(np.float32))
            total = block.sum(0, dtype=np.float64)
            for p in range(n_p):
                others = (total - block[p]) / (n_p - 1)
                # one timepoint at a time (a (Tb, Tb) compare for its diagonal is slower)
                r = np.array(
                    [
                        rsatoolbox_spearman(block[p, t : t + 1], np.stack([others[t], mean[t]]))[0]
                        for t in range(n_t)
                    ]
                )
                lower.append(r[:, 0])
                upper.append(r[:, 1])
    curve = np.concatenate(curves, axis=1)  # (P + 1, T)
    null = np.concatenate(nulls, axis=1)  # (P + 1, T, K)
    clusters = []
    if n_permutations:
        for k in range(len(curve)):
            found = cluster_permutation_test(curve[k], null[k].T.astype(np.float64), times)
            clusters.append([(c.start_ms, c.stop_ms, c.p_value) for c in found])
    n_p = len(curve) - 1
    ceiling = {
        "lower": np.concatenate(lower).reshape(-1, n_p, len(times)).mean(1),
        "upper": np.concatenate(upper).reshape(-1, n_p, len(times)).mean(1),
    }
    return {"curves": curve, "clusters": clusters, "ceiling": ceiling}


# ---------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=300)
    parser.add_argument("--times", type=int, default=281, help="from -100 ms, 5 ms apart")
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workdir", type=Path, help="keeps the simulated store (default: temp)")
    parser.add_argument("--repeats", type=int, default=1, help="time each the fastest of N runs")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[*PEERS, "pipelines", "peer_pipelines"],
        help="leave out these measurements",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        found = run(args, workdir)
        if "NPY_DISABLE_CPU_FEATURES" in os.environ:  # (set by use_avx2_sorts on AMD Zen 4)
            found["numpy_disabled"] = os.environ["NPY_DISABLE_CPU_FEATURES"]
        print(json.dumps(found))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path, generate_s = store_path(workdir, args)
    with RDMStore(path) as store:
        ids = list(store.concept_ids)
        data = store.read().values  # (P, T, n_pairs) float32
    model = ModelRDMs.from_features("spose", load_spose().select(ids).values, ids)
    rows = np.concatenate([mean_rdm(data)[None], data]).reshape(-1, data.shape[-1])
    out: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "concepts": len(ids),
        "participants": int(data.shape[0]),
        "times": int(data.shape[1]),
        "pairs": int(data.shape[2]),
        "rows": len(rows),
        "permutations": args.permutations,
        "generate_s": None if generate_s is None else round(generate_s, 1),
    }
    del data
    prefault(4 * rows.nbytes)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    diffs: dict[str, float] = {}
    seconds["core"], ours = timed(correlate, rows, model.values, "spearman", repeats=args.repeats)
    available = {
        "rsatoolbox": importlib.util.find_spec("rsatoolbox") is not None,
        "mne_rsa": importlib.util.find_spec("mne_rsa") is not None,
        "scipy": True,
    }
    peers: dict[str, tuple[Callable[..., np.ndarray], np.ndarray]] = {
        "rsatoolbox": (rsatoolbox_spearman, model.values),
        "mne_rsa": (mne_rsa_spearman, model.values[0]),
        "scipy": (scipy_spearman, model.values[0]),
    }
    for name in PEERS:
        if name in args.skip:
            continue
        if not available[name]:
            notes.append(f"{name} not installed: skipped")
            continue
        function, model_rdm = peers[name]
        seconds[name], values = timed(function, rows, model_rdm, repeats=args.repeats)
        diffs[name] = float(np.nanmax(np.abs(np.ravel(values) - ours[:, 0])))
    del rows
    if "pipelines" not in args.skip:
        diffs.update(pipelines(args, path, model, seconds, out, available["rsatoolbox"], notes))
    out.update({f"{name}_s": round(value, 3) for name, value in seconds.items()})
    for name in (*PEERS, "rsatoolbox_end_to_end", "rsatoolbox_end_to_end_perm"):
        if name in seconds:
            ours_name = name.replace("rsatoolbox_", "") if "end_to_end" in name else "core"
            out[f"ours_over_{name}"] = round(seconds[ours_name] / seconds[name], 3)
    if "end_to_end" in seconds:
        out["end_to_end_over_core"] = round(seconds["end_to_end"] / seconds["core"], 2)
    out["max_abs_diff"] = diffs
    if notes:
        out["note"] = "; ".join(notes)
    return out


def pipelines(
    args: argparse.Namespace,
    path: Path,
    model: ModelRDMs,
    seconds: dict[str, float],
    out: dict[str, Any],
    rsatoolbox: bool,
    notes: list[str],
) -> dict[str, float]:
    """End to end from the store, without and with permutations, ours and rsatoolbox's.

    Fills ``seconds`` (``end_to_end``, ``end_to_end_perm`` and the ``rsatoolbox_`` ones) and
    ``out["clusters_identical"]``; returns the largest differences of curves and ceilings.
    """
    ours = {}
    runs = {0: "end_to_end"}
    if args.permutations:
        runs[args.permutations] = "end_to_end_perm"
    for k, name in runs.items():
        config = TimeRSAConfig(n_permutations=k)
        seconds[name], ours[k] = timed(
            time_resolved_rsa, path, [model], config, False, repeats=args.repeats
        )
    if "peer_pipelines" in args.skip:
        return {}
    if not rsatoolbox:
        notes.append("rsatoolbox not installed: no peer pipeline")
        return {}
    diffs = {}
    for k, name in runs.items():
        seconds[f"rsatoolbox_{name}"], peer = timed(
            rsatoolbox_pipeline, path, model.values[0], k, 0, repeats=args.repeats
        )
        mine = ours[k]
        curves = np.stack([mine.group["spose"], *mine.participants["spose"]])
        diffs[f"rsatoolbox_{name}"] = max(
            float(np.nanmax(np.abs(curves - peer["curves"]))),
            *(
                float(np.nanmax(np.abs(mine.noise_ceiling[b] - peer["ceiling"][b])))
                for b in ("lower", "upper")
            ),
        )
        if k:
            found = [
                [(c.start_ms, c.stop_ms, c.p_value) for c in mine.clusters["spose"][t]]
                for t in ("group", *mine.participant_ids)
            ]
            out["clusters_identical"] = found == peer["clusters"]
    return diffs


if __name__ == "__main__":
    main()
