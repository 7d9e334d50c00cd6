"""The permutation nulls of time-resolved RSA: relabelled model RDMs against many MEG rows.

A permutation relabels the model's concepts, the same way at every timepoint. At THINGS-MEG
size (1,854 concepts: 1.7 M pairs; 281 timepoints; the participants' mean and 4 participants;
1,000 permutations) the null curves of one static model are 2.4e12 multiply-adds, and gathering
each permuted model costs about as much as multiplying it with a few timepoints. So the
standardised MEG rows of as many timepoints as fit a memory budget are held (float32) in
`DeferredNulls`, every permuted model is gathered once per such block, from the model's square
matrix, and multiplied with all of them in one float32 matrix product. The nulls are float32
anyway; the observed curves and the noise ceiling stay float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from clip_hba.rsa.rdms import pair_index

__all__ = ["DeferredNulls", "Permutations"]

NULL_BYTES = 512 << 20  # permuted model rows held at once (float32 for the deferred products)
DIRECT_BYTES = 256 << 20  # permuted models (float64) held at once where correlated directly
DEFERRED_BYTES = 4 << 30  # standardised MEG rows held (float32) for one block of products


class Permutations:
    """Seeded relabellings of the concepts, as index arrays into condensed or square RDMs."""

    def __init__(self, n_concepts: int, n_permutations: int, seed: int, rows: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.orders = [rng.permutation(n_concepts) for _ in range(n_permutations)]
        self.n = n_concepts
        self._u, self._v = np.triu_indices(n_concepts, k=1)
        self._row_counts = np.arange(n_concepts - 1, 0, -1)  # pairs (i, j > i) of each row i
        n_pairs = len(self._u)
        # a chunk of permuted models is (chunk x rows, n_pairs) float64
        self.chunk = max(1, min(n_permutations, DIRECT_BYTES // max(1, 8 * n_pairs * rows)))
        self._keep = n_permutations * n_pairs * 8 <= DIRECT_BYTES  # the pair indices, once built
        self._cache: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.orders)

    def _pairs(self, order: np.ndarray) -> np.ndarray:
        return pair_index(order[self._u], order[self._v], self.n)

    def chunks(self) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield (start, list of pair-index arrays) in chunks that fit the memory budget."""
        if self._keep and self._cache is None:  # (built when first needed: deferred nulls
            self._cache = [self._pairs(o) for o in self.orders]  # use square_indices only)
        for start in range(0, len(self.orders), self.chunk):
            stop = min(start + self.chunk, len(self.orders))
            if self._cache is not None:
                yield start, self._cache[start:stop]
            else:
                yield start, [self._pairs(o) for o in self.orders[start:stop]]

    def square_indices(self, k: int) -> np.ndarray:
        """Permutation ``k`` as flat indices into the square (n x n) model matrix, (n_pairs,).

        Pair (i, j) of the condensed order reads entry (order[i], order[j]); built by
        repeating each row's offset (cheaper than `pair_index`'s min/max arithmetic).
        """
        order = self.orders[k]
        return np.repeat(order[:-1] * self.n, self._row_counts) + order[self._v]


class DeferredNulls:
    """The standardised MEG rows of a block of timepoints, and the nulls that wait for them.

    Sub-blocks of timepoints are `add`-ed as they are read (their complete targets' rows,
    float32, laid out (time, target, pair) so that any number of filled timepoints is one
    contiguous matrix); `flush` multiplies them with every permuted model, writes the null
    curves of the targets that were complete and empties the block.

    Parameters
    ----------
    n_targets : int
        The participants' mean and every participant.
    n_pairs : int
    n_times : int
        The most timepoints the block holds.
    permutations : Permutations
    """

    def __init__(
        self, n_targets: int, n_pairs: int, n_times: int, permutations: Permutations
    ) -> None:
        self.z = np.zeros((n_times, n_targets, n_pairs), dtype=np.float32)
        self.complete = np.zeros((n_targets, n_times), dtype=bool)
        self.permutations = permutations
        self.models: list[tuple[list[str], np.ndarray]] = []
        self.start = 0  # index of the block's first timepoint in the whole window
        self.filled = 0

    @staticmethod
    def block_times(n_targets: int, n_pairs: int, n_times: int, step: int) -> int:
        """How many timepoints (a multiple of the read ``step``) the memory budget holds."""
        fit = max(1, DEFERRED_BYTES // (4 * n_targets * n_pairs) // step) * step
        n_blocks = -(-n_times // fit)  # ceil: blocks of equal size, not a full one and a stub
        per_block = -(-n_times // n_blocks)
        return min(n_times, -(-per_block // step) * step)

    def add_model(self, names: Sequence[str], z_model: np.ndarray) -> None:
        """Defer the nulls of a static or layer model, ``z_model`` (M, n_pairs) standardised."""
        n = self.permutations.n
        u, v = np.triu_indices(n, k=1)
        square = np.zeros((len(z_model), n * n), dtype=np.float32)
        square[:, u * n + v] = z_model
        square[:, v * n + u] = z_model
        self.models.append((list(names), square))

    def room(self) -> int:
        return len(self.z) - self.filled

    def add(self, z_rows: np.ndarray, targets: Sequence[int]) -> None:
        """A sub-block's standardised rows ``z_rows`` (len(targets), Tb, n_pairs) of ``targets``."""
        n_times = z_rows.shape[1]
        rows = slice(self.filled, self.filled + n_times)
        self.z[rows] = 0.0  # targets left out (missing pairs) were computed directly
        self.z[rows, list(targets)] = z_rows.transpose(1, 0, 2)
        self.complete[:, rows] = False
        self.complete[list(targets), rows] = True
        self.filled += n_times

    def flush(self, nulls: dict[str, np.ndarray]) -> None:
        """Write the block's null curves into ``nulls`` (target, permutation, time) and empty it."""
        if self.filled:
            filled, n_targets, n_pairs = self.filled, self.z.shape[1], self.z.shape[2]
            flat = self.z[:filled].reshape(filled * n_targets, n_pairs)
            where = self.complete[:, None, :filled]
            times = slice(self.start, self.start + filled)
            for names, square in self.models:
                for start, null in self._products(flat, square):
                    null = null.reshape(filled, n_targets, -1, len(names))
                    stop = start + null.shape[2]
                    for m, name in enumerate(names):
                        new = null[..., m].transpose(1, 2, 0)  # (target, permutation, time)
                        np.copyto(nulls[name][:, start:stop, times], new, where=where)
        self.start += self.filled
        self.filled = 0

    def _products(self, flat: np.ndarray, square: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(start, flat @ permuted.T) for chunks of permutations; permuted (k*M, n_pairs)."""
        n_models, n_pairs = len(square), flat.shape[1]
        n_permutations = len(self.permutations)
        chunk = max(1, min(n_permutations, NULL_BYTES // (4 * n_pairs * n_models)))
        permuted = np.empty((chunk * n_models, n_pairs), dtype=np.float32)

        def gather(k: int, row: int) -> None:  # np.take releases the GIL
            indices = self.permutations.square_indices(k)
            # (mode "clip": the default "raise" writes into a copy of ``out``; all in range)
            np.take(square, indices, axis=1, out=permuted[row : row + n_models], mode="clip")

        workers = max(1, torch.get_num_threads())
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, n_permutations, chunk):
                ks = range(start, min(start + chunk, n_permutations))
                list(pool.map(gather, ks, [j * n_models for j in range(len(ks))]))
                yield start, flat @ permuted[: len(ks) * n_models].T
