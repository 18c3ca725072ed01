"""The simple, documented cost models a profile fits to its measured points, and their evaluation.

Every model is a small dict in profile.json next to the points it was fitted on:

- ``linear``: ``s = a + b * x`` (least squares, ``a, b >= 0``).
- ``piecewise``: straight lines between measured ``knots`` ``[[x, s], ...]``; beyond the last knot
  the last segment's slope goes on, below the first the first segment's (never below 0).
- ``nnls``: ``s = sum(coef[k] * feature[k])`` over named features, least squares with every
  coefficient >= 0 (exact: the best of every subset of features, there are at most a handful).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np


def fit_linear(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """``{"kind": "linear", "a", "b"}`` fitted on the points, both coefficients >= 0."""
    coef = nnls(np.stack([np.ones(len(xs)), np.asarray(xs, float)], axis=1), np.asarray(ys, float))
    return {"kind": "linear", "a": float(coef[0]), "b": float(coef[1])}


def fit_piecewise(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """``{"kind": "piecewise", "knots"}``: the median time at each distinct x, in x order, made
    non-decreasing (a longer batch never costs less; a dip is measurement noise)."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        by_x.setdefault(float(x), []).append(float(y))
    knots, floor = [], 0.0
    for x in sorted(by_x):
        floor = max(floor, float(np.median(by_x[x])))
        knots.append([x, floor])
    return {"kind": "piecewise", "knots": knots}


def nnls(features: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """argmin ||features @ coef - ys|| with coef >= 0, by trying every subset of columns."""
    n = features.shape[1]
    best, best_err = np.zeros(n), float(np.sum(ys**2))
    for size in range(1, n + 1):
        for cols in itertools.combinations(range(n), size):
            sol, *_ = np.linalg.lstsq(features[:, cols], ys, rcond=None)
            if np.any(sol < 0):
                continue
            coef = np.zeros(n)
            coef[list(cols)] = sol
            err = float(np.sum((features @ coef - ys) ** 2))
            if err < best_err - 1e-18:
                best, best_err = coef, err
    return best


def fit_nnls(names: Sequence[str], rows: Sequence[Sequence[float]], ys: Sequence[float]) -> dict:
    """``{"kind": "nnls", "coef": {name: c}}`` over the feature ``rows`` (one per point)."""
    coef = nnls(np.asarray(rows, float), np.asarray(ys, float))
    return {"kind": "nnls", "coef": {name: float(c) for name, c in zip(names, coef, strict=True)}}


def evaluate(model: dict, x: float) -> float:
    """A ``linear`` or ``piecewise`` model at ``x`` (seconds, >= 0)."""
    if model["kind"] == "linear":
        return max(0.0, model["a"] + model["b"] * x)
    if model["kind"] == "piecewise":
        return piecewise(model["knots"], x)
    raise ValueError(f"a {model['kind']!r} model takes named features: use evaluate_features")


def evaluate_features(model: dict, features: dict[str, float]) -> float:
    """An ``nnls`` model at ``features`` (a missing feature counts 0)."""
    return max(0.0, sum(c * features.get(name, 0.0) for name, c in model["coef"].items()))


def piecewise(knots: Sequence[Sequence[float]], x: float) -> float:
    """Linear interpolation between ``knots``, extrapolated by the end segments' slopes, >= 0."""
    if len(knots) == 1:
        return max(0.0, knots[0][1] * x / knots[0][0]) if knots[0][0] else knots[0][1]
    xs = [k[0] for k in knots]
    i = min(max(bisect.bisect_right(xs, x), 1), len(knots) - 1)
    (x0, y0), (x1, y1) = knots[i - 1], knots[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class Piecewise:
    """``piecewise(knots, x)`` with the knots read once (the simulator evaluates it millions of times)."""

    def __init__(self, knots: Sequence[Sequence[float]]) -> None:
        self.knots = [list(k) for k in knots]
        self.xs = [k[0] for k in knots]
        self._cache: dict[float, float] = {}

    def __call__(self, x: float) -> float:
        y = self._cache.get(x)
        if y is None:
            y = piecewise(self.knots, x)
            if len(self._cache) < 4096:
                self._cache[x] = y
        return y


def intercept(knots: Sequence[Sequence[float]]) -> float:
    """The piecewise model's value at 0 (its first segment extended), >= 0."""
    return piecewise(knots, 0.0)
