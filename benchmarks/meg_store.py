"""Time the import of one THINGS-MEG-sized release file and a participant-mean window read.

Generates (or reuses, from ``--release``) a release-format file for one participant: a MATLAB
v7.3 file whose variable ``mat`` reads as (1, 281, 1854, 1854) float32 (about 3.9 GB), with
decoding accuracies in the upper triangle and NaN on the diagonal and in the lower triangle.
Then, in this process, imports it into a store and reads the participant mean of the 100 ms
window 100..200 ms. Peak RSS is the process's maximum resident set (`resource.getrusage`), which
covers the generation too.

Prints one JSON line: {"import_s", "peak_rss_gb", "file_gb", "store_gb", "window_read_s", ...}.
Usage: python benchmarks/meg_store.py [--release PATH] [--concepts N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from clip_hba.data import load_concepts
from clip_hba.meg import THINGS_MEG_TIMES_MS, RDMStore, import_things_mat, write_things_mat


def generate_release(path: Path, n_concepts: int, seed: int = 0) -> None:
    """One participant's 281 decoding RDMs, upper triangle only, streamed to ``path``."""
    rng = np.random.default_rng(seed)
    n_times = len(THINGS_MEG_TIMES_MS)
    lower = np.tril(np.ones((n_concepts, n_concepts), dtype=bool))

    def squares():
        for t in range(n_times):
            square = rng.normal(50.0, 5.0, size=(n_concepts, n_concepts)).astype(np.float32)
            square[lower] = np.nan
            yield 0, t, square

    write_things_mat(path, (1, n_times, n_concepts, n_concepts), squares(), verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, help="release file to reuse or create")
    parser.add_argument("--concepts", type=int, default=1854, help="concepts (default 1854)")
    parser.add_argument("--keep", action="store_true", help="keep the generated store")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="meg_store_"))
    release = args.release or workdir / "validation-pairwise_decoding_RDM1854.mat"
    generated_s = None
    if not release.exists():
        started = time.perf_counter()
        generate_release(release, args.concepts)
        generated_s = round(time.perf_counter() - started, 1)
    concept_ids = load_concepts().ids[: args.concepts]
    store_path = workdir / "things_meg.h5"

    started = time.perf_counter()
    import_things_mat(release, store_path, concept_ids=concept_ids, verbose=False)
    import_s = time.perf_counter() - started

    started = time.perf_counter()
    with RDMStore(store_path) as store:
        window = store.mean(window_ms=(100.0, 200.0))
    window_read_s = time.perf_counter() - started

    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    result = {
        "import_s": round(import_s, 1),
        "peak_rss_gb": round(peak_rss_gb, 3),
        "file_gb": round(release.stat().st_size / 1e9, 2),
        "store_gb": round(store_path.stat().st_size / 1e9, 2),
        "window_read_s": round(window_read_s, 2),
        "window_shape": list(window.values.shape),
        "generate_s": generated_s,
    }
    if not args.keep:
        store_path.unlink()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
