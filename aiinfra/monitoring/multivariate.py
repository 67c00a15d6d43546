"""A multivariate drift test on the model's inputs: maximum mean discrepancy with a permutation test.

The per-feature tests see each input alone; a change in how inputs move together (a correlation that
flips, a segment that grows while every margin stays put) passes them all. MMD compares the two
samples' mean embeddings under a Gaussian kernel, so it sees the joint distribution.

The exact statistic costs O((n + m)^2) kernel evaluations per permutation, too slow for a window per
second on two cores. Random Fourier features (Rahimi and Recht, 2007) make it linear: with
``z(x) = sqrt(2 / D) cos(x W + b)``, ``W ~ N(0, 1 / sigma^2)``, ``b ~ U(0, 2 pi)``, the squared distance
between the samples' mean ``z`` estimates MMD^2 for the kernel of bandwidth sigma, and one permutation
is one matrix product: the ``permutations`` random splits of the pooled rows are a 0/1 selection
matrix, so all of them cost one (P x N) by (N x D) multiply. sigma is the median pairwise distance in
the reference (the usual heuristic). The p-value is (1 + #{permuted >= observed}) / (1 + P), exact for
a permutation test whatever the approximation.

Inputs are put on one scale first: numeric columns standardised by the reference's mean and standard
deviation (constant columns dropped: they carry no information), categorical codes one-hot, so that
moving one row from one category to another moves it as far as one standard deviation does.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = ["MMDTest", "MultivariateDrift"]

MAX_ROWS = 1000  # rows of each side the test uses: enough power for a window, bounded cost


class MultivariateDrift(BaseModel):
    """The joint test of a window's inputs; ``drifted`` is at half the detector's alpha (the other half is the
    per-feature family's)."""

    model_config = ConfigDict(extra="forbid")

    test: str = "mmd"
    statistic: float  # the MMD^2 estimate, in the standardised space
    p_value: float
    drifted: bool
    permutations: int
    n_reference: int
    n_window: int


class MMDTest:
    """Args:
    x_ref: the detector's reference matrix (numeric columns, then categorical codes).
    categories: column index -> number of reference codes, for the categorical columns.
    alpha: significance level.
    permutations: random splits the p-value is computed from.
    features: random Fourier features (D); more is a closer kernel approximation.
    seed: seeds the reference subsample, the features and each window's permutations.
    """

    def __init__(self, x_ref: np.ndarray, categories: Mapping[int, int], *, alpha: float, permutations: int = 200,
                 features: int = 128, seed: int = 0) -> None:
        self.alpha, self.permutations, self.seed = alpha, permutations, seed
        rng = np.random.default_rng(seed)
        numeric = [j for j in range(x_ref.shape[1]) if j not in categories]
        mean = x_ref[:, numeric].mean(axis=0)
        sd = x_ref[:, numeric].std(axis=0)
        keep = sd > 1e-12
        self._numeric = [j for j, k in zip(numeric, keep) if k]
        self._mean, self._sd = mean[keep], sd[keep]
        self._categories = dict(categories)
        ref = self._embed_inputs(x_ref)
        if len(ref) > MAX_ROWS:
            ref = ref[rng.choice(len(ref), MAX_ROWS, replace=False)]
        self.n_reference = len(ref)
        pairs = ref[rng.choice(len(ref), size=(min(len(ref), 500), 2))]
        distances = np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=1)
        sigma = float(np.median(distances[distances > 0])) if (distances > 0).any() else 1.0
        self._w = rng.normal(0.0, 1.0 / sigma, size=(ref.shape[1], features))
        self._b = rng.uniform(0.0, 2 * np.pi, size=features)
        self._z_ref = self._features(ref)

    def _embed_inputs(self, x: np.ndarray) -> np.ndarray:
        parts = [(x[:, self._numeric] - self._mean) / self._sd]
        for j, k in self._categories.items():
            codes = np.clip(x[:, j].astype(np.int64), 0, k)
            one_hot = np.zeros((len(x), k + 1))
            one_hot[np.arange(len(x)), codes] = 1.0 / np.sqrt(2.0)  # one category moved: distance 1
            parts.append(one_hot)
        return np.hstack(parts)

    def _features(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self._w.shape[1]) * np.cos(x @ self._w + self._b)

    def check(self, x: np.ndarray) -> MultivariateDrift:
        # Each window gets its own permutations, drawn from its content: the same window, checked again (or by
        # a restarted monitor), gets the same answer.
        rng = np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(x).tobytes())])
        if len(x) > MAX_ROWS:
            x = x[rng.choice(len(x), MAX_ROWS, replace=False)]
        z = np.vstack((self._z_ref, self._features(self._embed_inputs(x))))
        n_ref, n_win = len(self._z_ref), len(x)
        observed = _mmd2(z[:n_ref].mean(axis=0), z[n_ref:].mean(axis=0))
        # Each permutation: a random n_win of the pooled rows play the window. Selecting them is a 0/1 row
        # of the selection matrix, so all the window means are one product; the reference means follow
        # from the pooled total.
        ranks = np.argsort(rng.random((self.permutations, len(z))), axis=1)
        select = np.zeros((self.permutations, len(z)))
        np.put_along_axis(select, ranks[:, :n_win], 1.0, axis=1)
        window_sums = select @ z
        total = z.sum(axis=0)
        permuted = np.sum((window_sums / n_win - (total - window_sums) / n_ref) ** 2, axis=1)
        p_value = float((1 + np.sum(permuted >= observed)) / (1 + self.permutations))
        return MultivariateDrift(statistic=float(observed), p_value=p_value, drifted=p_value < self.alpha,
                                 permutations=self.permutations, n_reference=n_ref, n_window=n_win)


def _mmd2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a - b) ** 2))
