"""Channel permutations that make N:M patterns cheaper (pure numpy).

An N:M pattern prunes the ``M − N`` least salient weights of every group of ``M``
consecutive input channels, row by row. Which channels share a group is an accident of
the export: reordering the input channels of a layer (and, to keep the function, the
output channels of whatever produces them) changes what the pattern must remove without
changing the dense model. After Pool & Yu, "Channel Permutations for N:M Sparsity"
(NeurIPS 2021), we choose the order that keeps the most saliency.

Objective. With ``s[r, c] ≥ 0`` the saliency of weight ``(r, c)`` (summed over every
matrix that reads channel ``c``, rows stacked) and a partition of the channels into
groups ``G`` of ``M``, the pattern loses

    L = Σ_G Σ_r  (sum of the M − N smallest of s[r, c], c ∈ G).

Search. Start from an interleaved order (channels sorted by total saliency, the ``k``-th
group takes ranks ``k, k + G, k + 2G, …``, so strong channels are spread over groups), or
from the given order when that loses less. Then, for each group in turn and for a few
passes, make the single swap of two channels between two groups that lowers ``L`` most. For 2:4 a swap is priced in closed form: if a group
loses channel ``a`` and the other three values of row ``r`` sorted are
``q₁ ≤ q₂ ≤ q₃``, the two smallest of ``{q₁, q₂, q₃, x}`` sum to
``q₁ + q₂ + min(0, x − q₂)``, so the new cost of a group for every candidate incoming
channel ``x`` is one vectorised ``min`` over rows. In general, with ``p = M − N``, ``B``
the sum of the ``p`` smallest of the ``M − 1`` staying values and ``e`` the ``p``-th
smallest of them, the cost is ``B + min(0, x − e)``. ``L`` never increases, and the
result is a permutation of ``range(cols)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nm_loss", "nm_permutation"]


def nm_loss(saliency: np.ndarray, perm: np.ndarray, n: int, m: int) -> float:
    """``L`` of the module docstring for channel order ``perm`` (columns of ``saliency``)."""
    s = np.asarray(saliency, dtype=np.float64)[:, perm]
    rows, cols = s.shape
    s = np.sort(s.reshape(rows, cols // m, m), axis=2)
    return float(s[:, :, : m - n].sum())


def _interleaved(saliency: np.ndarray, m: int) -> np.ndarray:
    order = np.argsort(-saliency.sum(0), kind="stable")
    groups = len(order) // m
    return order.reshape(m, groups).T.copy()  # group k: ranks k, k + G, k + 2G, …


def _prices(values: np.ndarray, prune: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For values ``[G, M, rows]`` in group order: each group's loss, and per (group, dropped
    slot, row) the sum of the ``prune`` smallest of the other ``M − 1`` values (``B``) and the
    ``prune``-th smallest of them (``e``)."""
    g, m, rows = values.shape
    cost = np.sort(values, axis=1)[:, :prune].sum(axis=(1, 2), dtype=np.float64)
    base = np.empty((g, m, rows), dtype=values.dtype)
    edge = np.empty((g, m, rows), dtype=values.dtype)
    for a in range(m):
        rest = np.sort(np.delete(values, a, axis=1), axis=1)
        base[:, a] = rest[:, :prune].sum(1)
        edge[:, a] = rest[:, prune - 1]
    return cost, base, edge


def nm_permutation(
    saliency: np.ndarray,
    n: int,
    m: int,
    *,
    passes: int = 16,
    candidates: int = 32,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """An order of the columns of ``saliency`` (``[rows, cols]``, ``cols`` a multiple of
    ``m``) whose N:M loss ``L`` is at most that of the given order and of the interleaved one
    (the search starts from the better of the two; module docstring).

    Group ``g`` of the result is ``perm[g·m:(g+1)·m]``. ``passes`` bounds the sweeps over
    groups (a sweep with no improving swap stops early); each group is offered swaps with
    ``candidates`` other groups drawn at random (all of them when there are fewer), which
    keeps a sweep linear in the number of channels. Seeded: the same input gives the same order.
    """
    s = np.ascontiguousarray(np.asarray(saliency, dtype=np.float64))
    cols = s.shape[1]
    if cols % m or cols < 2 * m or not 0 < n < m:
        return np.arange(cols)
    s = s / max(float(s.max()), np.finfo(np.float64).tiny)  # scale-free, safe in float32
    s32 = s.astype(np.float32)
    prune = m - n
    groups = _interleaved(s, m)  # [G, M] channel ids
    if nm_loss(s, np.arange(cols), n, m) < nm_loss(s, groups.reshape(-1), n, m):
        groups = np.arange(cols).reshape(-1, m)  # the given order suits the pattern better: start there
    count = len(groups)
    rng = rng or np.random.default_rng(0)
    values = s32[:, groups].transpose(1, 2, 0).copy()  # [G, M, rows]
    cost, base, edge = _prices(values, prune)
    for _ in range(passes):
        improved = False
        for g1 in rng.permutation(count):
            if count - 1 > candidates:
                others = rng.choice(count - 1, size=candidates, replace=False)
                others = others + (others >= g1)
            else:
                others = np.delete(np.arange(count), g1)
            vals, edges = values[others], edge[others]  # [K, M, rows]
            # g1 without slot a taking x = any candidate channel, and candidate slot b taking g1's channel a
            gain1 = np.minimum(0.0, vals[:, :, None, :] - edge[g1][None, None]).sum(-1)  # [K, b, a]
            gain2 = np.minimum(0.0, values[g1][None, None] - edges[:, :, None]).sum(-1)  # [K, b, a]
            new1 = base[g1].sum(-1)[None, None, :] + gain1
            new2 = base[others].sum(-1)[:, :, None] + gain2
            delta = new1 + new2 - cost[g1] - cost[others][:, None, None]  # [K, b, a]
            k = np.unravel_index(int(np.argmin(delta)), delta.shape)
            if delta[k] >= -1e-7 * max(float(cost[g1]), 1e-30):
                continue
            g2, b, a = int(others[k[0]]), int(k[1]), int(k[2])
            groups[g1, a], groups[g2, b] = groups[g2, b], groups[g1, a]
            pair = [g1, g2]
            values[pair] = s32[:, groups[pair]].transpose(1, 2, 0)
            cost[pair], base[pair], edge[pair] = _prices(values[pair], prune)
            improved = True
        if not improved:
            break
    return groups.reshape(-1)
