"""Minimum-cost assignment of a chunk's few local speakers to global speakers.

The problems the clustering solves are tiny (3 local speakers, at most ``max_speakers`` global
ones), so they are solved exactly by summing the costs of every mapping on a grid, in numpy. Only
problems too large to enumerate go to ``scipy.optimize.linear_sum_assignment``, imported then:
scipy.optimize costs 0.4 s of import time that the default path never pays.
"""

from __future__ import annotations

from functools import lru_cache
import numpy as np

MAX_ENUMERATED = 200_000  # grid cells (columns ** rows); beyond this scipy solves it


@lru_cache(maxsize=32)
def _collisions(rows: int, cols: int) -> np.ndarray:
    """Mask of the ``(cols,) * rows`` grid cells where two rows share a column."""
    grids = np.indices((cols,) * rows).reshape(rows, -1)
    clash = np.zeros(grids.shape[1], dtype=bool)
    for a in range(rows):
        for b in range(a + 1, rows):
            clash |= grids[a] == grids[b]
    return clash


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as ``scipy.optimize.linear_sum_assignment`` (minimise): row indexes
    (sorted) and their columns; every row is assigned when rows <= columns, else every column."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix holds NaN or infinite values")
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if rows > cols:
        c, r = linear_sum_assignment(cost.T)
        order = np.argsort(r, kind="stable")
        return r[order], c[order]
    if cols ** rows > MAX_ENUMERATED:
        from scipy.optimize import linear_sum_assignment as scipy_lsa

        return scipy_lsa(cost)
    # total cost of every (column of row 0, column of row 1, ...) cell, by broadcasting
    total = np.zeros((1,) * rows)
    for r in range(rows):
        shape = [1] * rows
        shape[r] = cols
        total = total + cost[r].reshape(shape)
    flat = np.where(_collisions(rows, cols), np.inf, total.reshape(-1))
    best = np.unravel_index(int(np.argmin(flat)), (cols,) * rows)
    return np.arange(rows, dtype=np.intp), np.array(best, dtype=np.intp)
