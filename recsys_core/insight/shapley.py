"""Shapley values of a cooperative game of n players, given its value function on coalition masks.

Up to `max_exact` players the values are computed exactly by enumerating all 2^n coalitions. Above that
they are estimated with antithetic permutations, drawn exactly as the `shap` library's Permutation
explainer draws them (same seed, same values: tested against it), in plain NumPy so nothing is
JIT-compiled on a visitor's first click; each full pass telescopes from the empty to the full coalition,
so the estimate still adds up exactly (efficiency) and only the split between players carries sampling
noise. The method and the number of evaluations are part of every result.

Planning the coalitions (`plan_coalitions`) and solving their values (`Coalitions.solve`) are separate
steps, so a caller can score the coalitions of many games together (`insight.explain`'s global view).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_EXACT = 10  # 2^10 = 1,024 coalitions: exact enumeration stays one cheap batch
MAX_EVALS = 1_000  # permutation budget (model evaluations) per explanation; at least 2 passes whatever n

ValueFn = Callable[[np.ndarray], np.ndarray]  # bool coalition masks [m, n_players] -> values [m]


@dataclass(frozen=True)
class ShapleyValues:
    """Shapley values of a game, v(empty), v(all players), the method, and how many coalitions were scored."""

    values: np.ndarray
    base: float
    full: float
    method: str
    n_evals: int


@dataclass(frozen=True, eq=False)
class Coalitions:
    """The coalitions to score for one game, and how to turn their values into Shapley values.

    Planning and solving are split so that the games of many users can be scored together, in one
    model call per batch of coalitions (`Explainer.global_view`), and still give exactly the values
    each game gives alone.
    """

    n: int
    masks: np.ndarray  # bool [m, n]: which players each coalition keeps
    method: str  # "exact" | "permutation"
    orders: np.ndarray  # int [n_permutations, n]: permutation method only

    def solve(self, v: np.ndarray) -> ShapleyValues:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if self.method == "exact":
            values, base, full = _solve_exact(v, self.n)
        else:
            values, base, full = _solve_permutations(v, self.orders)
        return ShapleyValues(values, base, full, self.method, len(self.masks))


def plan_coalitions(n: int, max_exact: int = MAX_EXACT, max_evals: int = MAX_EVALS, seed: int = 0) -> Coalitions:
    """All 2^n coalitions up to `max_exact` players, else antithetic permutations within `max_evals`."""
    if n <= max_exact:
        codes = np.arange(2**n, dtype=np.int64)
        return Coalitions(n, ((codes[:, None] >> np.arange(n)) & 1).astype(bool), "exact", np.zeros((0, n), np.int64))
    orders = permutation_orders(n, max(max_evals, 2 * (2 * n + 1)) // (2 * n + 1), seed)
    return Coalitions(n, _permutation_masks(orders), "permutation", orders)


def _solve_exact(v: np.ndarray, n: int) -> tuple[np.ndarray, float, float]:
    codes = np.arange(2**n, dtype=np.int64)
    sizes = ((codes[:, None] >> np.arange(n)) & 1).sum(1)
    fact = [math.factorial(s) for s in range(n + 1)]
    # Weight of a coalition S without player i: |S|! (n - |S| - 1)! / n!
    weight = np.array([fact[s] * fact[n - s - 1] / fact[n] for s in range(n)] + [0.0])[sizes]
    values = np.empty(n)
    for i in range(n):  # n <= MAX_EXACT: a loop over players, each step vectorised over coalitions
        without = codes[(codes >> i) & 1 == 0]
        values[i] = np.sum(weight[without] * (v[without | (1 << i)] - v[without]))
    return values, float(v[0]), float(v[-1])


def exact_shapley(value_fn: ValueFn, n: int) -> tuple[np.ndarray, float, float]:
    """(values, v(empty), v(all)) by scoring all 2^n coalitions in one batch."""
    plan = plan_coalitions(n, max_exact=n)
    return _solve_exact(np.asarray(value_fn(plan.masks), dtype=np.float64).reshape(-1), n)


def permutation_orders(n: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """[n_permutations, n] player orders, the sequence shap's Permutation explainer draws for this seed
    (each order shuffles the previous one in place), so values match the shap-based version exactly."""
    rng = np.random.RandomState(seed)  # shap's legacy stream, without touching NumPy's global generator
    order, out = np.arange(n), np.empty((n_permutations, n), dtype=np.int64)
    for p in range(n_permutations):  # a few dozen draws; each shuffle depends on the one before
        rng.shuffle(order)
        out[p] = order
    return out


def _permutation_masks(orders: np.ndarray) -> np.ndarray:
    """Per order: the empty coalition, then players added in order up to all, then removed in the same order."""
    n_perm, n = orders.shape
    position = np.empty_like(orders)
    position[np.arange(n_perm)[:, None], orders] = np.arange(n)
    steps = np.arange(n + 1)[:, None, None]
    forward = position[None] < steps  # [n + 1, P, n]: the first j players of the order present
    backward = position[None] >= steps[1:]  # [n, P, n]: all but the first j
    return np.concatenate([forward, backward]).transpose(1, 0, 2).reshape(-1, n)


def _solve_permutations(v: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Mean marginal contribution of each player over the forward and the reversed (antithetic) passes."""
    n_perm, n = orders.shape
    out = v.reshape(n_perm, 2 * n + 1)
    gains = (out[:, 1:n + 1] - out[:, :n]) + (out[:, n:2 * n] - out[:, n + 1:])  # by position in the order
    values = np.zeros(n)
    np.add.at(values, orders.ravel(), gains.ravel())
    return values / (2 * n_perm), float(out[-1, 0]), float(out[-1, n])


def shapley(value_fn: ValueFn, n: int, max_exact: int = MAX_EXACT, max_evals: int = MAX_EVALS,
            seed: int = 0) -> ShapleyValues:
    """Shapley values of an n-player game: exact up to `max_exact` players, else permutation sampling."""
    plan = plan_coalitions(n, max_exact, max_evals, seed)
    return plan.solve(value_fn(plan.masks))
