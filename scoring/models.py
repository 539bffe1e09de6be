"""The online models, all learning one event at a time after predicting it.

- `ImplicitMF`: River's `FunkMF` update with the logistic loss on implicit feedback, on
  numpy matrices (checked against `river.reco.FunkMF`). An event is a positive whose loss
  weight is the event type's weight; `negatives` items drawn from recent traffic (so, in
  proportion to popularity) are negatives of weight 1. A batch learns in dependency waves
  (exactly the in-order result) and scoring 200 candidates is one matrix-vector product.
- `RatingModel`: `river.reco.BiasedMF` on `rate` events, predictions clipped to the scale.
- `PairwiseRanker` (the recommender's ranker): a linear model over standardised candidate
  features trained pairwise (BPR, AdaGrad) in numpy — the event's item against negatives
  sampled from the same candidate set, so it learns to rank *within* candidates; a batch's
  feature scales are computed at once, its AdaGrad steps one by one.
- `Ranker`: `river.linear_model.LogisticRegression` over the candidate feature matrix
  (pointwise; kept for comparison, no longer the recommender's default).

All of them pickle, so a checkpoint is `pickle.dumps(model)`.

>>> r = Ranker(["a", "b"], lr=0.5)
>>> for _ in range(50):
...     r.learn(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0]))
>>> s = r.score(np.array([[1.0, 0.0], [0.0, 1.0]]))
>>> bool(s[0] > s[1])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from river import linear_model, optim, reco

from scoring.rowdot import gathered_rowdot
from scoring.types import FloatArray

__all__ = ["ImplicitMF", "PairwiseRanker", "Ranker", "RatingModel"]

IntArray = NDArray[np.int64]


class ImplicitMF:
    """Implicit-feedback matrix factorization: River's `FunkMF` with the logistic loss and
    sampled negatives, the same update on numpy matrices (user rows by id, item rows by the
    catalog's dense index), so a batch learns in a few array operations and scoring 200
    candidates is one matrix-vector product. `tests/test_scoring_batch.py` checks it
    against `river.reco.FunkMF.learn_one` (same initial factors, equal to rounding).

    An event is a positive whose loss weight is the event type's weight; its negatives
    (items drawn from recent traffic) have weight 1. New factors are drawn from
    N(0, `init_std`) in River's order (the user, then the item, at their first step).

    >>> mf = ImplicitMF(n_factors=4, seed=1)
    >>> for _ in range(30):
    ...     mf.learn("u1", 0, weight=1.0, negatives=[1])
    >>> s = mf.scores("u1", np.array([0, 1]))
    >>> bool(s[0] > s[1])
    True
    """

    def __init__(
        self,
        n_factors: int = 16,
        lr: float = 0.05,
        l2: float = 0.001,
        init_std: float = 0.1,
        seed: int = 0,
        clip_gradient: float = 1e12,
    ) -> None:
        self.n_factors = n_factors
        self.lr = lr
        self.l2 = l2
        self.init_std = init_std
        self.clip_gradient = clip_gradient
        self.weight_neg = 1.0
        self._init = np.random.RandomState(seed)  # River's Normal initializer
        self.users: dict[str, int] = {}
        self.user_matrix: FloatArray = np.full((64, n_factors), np.nan)  # NaN: no factors yet
        self._free_rows: list[int] = []  # rows of forgotten users, reused first
        self.item_matrix: FloatArray = np.zeros((64, n_factors))
        self.item_known: NDArray[np.bool_] = np.zeros(64, bool)
        self.steps = 0

    def learn(self, user: str, item: int, weight: float, negatives: Sequence[int]) -> None:
        """One positive (`weight` = its event type's weight) and its sampled negatives."""
        negs = np.array([n for n in negatives if n != item], np.int64)
        self.learn_many(
            [user], np.array([item]), np.array([weight]), negs[None, :], np.ones((1, negs.shape[0]), bool)
        )

    def learn_many(
        self,
        users: Sequence[str],
        items: IntArray,
        weights: FloatArray,
        negatives: IntArray,
        valid: NDArray[np.bool_],
    ) -> None:
        """`learn(users[e], items[e], weights[e], negatives[e][valid[e]])` for every event e
        in order (a negative equal to the event's item must already be left out), computed
        in waves: a step goes into the first wave after the last one that touched its user
        or its item, so every step reads exactly the factors it would read in order, and a
        wave (distinct users, distinct items) is a few array operations for all its steps."""
        n_ev = len(users)
        if n_ev == 0:
            return
        # the steps, event by event: the positive, then the negatives
        seq_item = np.concatenate([items[:, None], negatives], axis=1)
        keep = np.concatenate([np.ones((n_ev, 1), bool), valid], axis=1)
        seq_item = seq_item[keep]
        y = np.concatenate([np.ones((n_ev, 1)), np.zeros(negatives.shape)], axis=1)[keep]
        wt = np.concatenate([weights[:, None], np.full(negatives.shape, self.weight_neg)], axis=1)[keep]
        ev = np.broadcast_to(np.arange(n_ev)[:, None], keep.shape)[keep]
        rows = self._user_rows(users)
        seq_user = rows[ev]
        self._create(seq_user, seq_item, rows)
        wave = _waves(seq_user, seq_item)
        order = np.argsort(wave, kind="stable")
        bounds = np.flatnonzero(np.diff(wave[order])) + 1
        big_u, big_v = self.user_matrix, self.item_matrix
        l2, clip, lr = self.l2, self.clip_gradient, self.lr
        sign_all = 2.0 * y - 1.0  # labels {0, 1} as {-1, +1}
        with np.errstate(over="ignore"):
            for part in np.split(order, bounds):
                wu, wi = seq_user[part], seq_item[part]
                uu, vv = big_u[wu], big_v[wi]
                sign = sign_all[part]
                z = np.einsum("ij,ij->i", uu, vv) * sign
                w = wt[part]
                grad = np.where(  # River's Log.gradient, branch for branch
                    z > 18.0,
                    w * np.exp(-z) * -sign,
                    np.where(z < -18.0, w * -sign, w * -sign / (np.exp(z) + 1.0)),
                )
                g = np.minimum(np.maximum(grad, -clip), clip)[:, None]
                big_u[wu] = uu - lr * (g * vv + l2 * uu)
                big_v[wi] = vv - lr * (g * uu + l2 * vv)
        self.steps += seq_item.shape[0]

    def _user_rows(self, users: Sequence[str]) -> IntArray:
        """Each user's row (a new user gets the next one; its factors come in `_create`)."""
        rows = self.users
        out = np.empty(len(users), np.int64)
        for k, user in enumerate(users):
            r = rows.get(user)
            if r is None:
                r = rows[user] = self._free_rows.pop() if self._free_rows else len(rows)
            out[k] = r
        n = len(rows) + len(self._free_rows)
        if n > self.user_matrix.shape[0]:
            grow = max(n, 2 * self.user_matrix.shape[0]) - self.user_matrix.shape[0]
            self.user_matrix = np.vstack([self.user_matrix, np.full((grow, self.n_factors), np.nan)])
        return out

    def _create(self, seq_user: IntArray, seq_item: IntArray, batch_rows: IntArray) -> None:
        """Initial factors of the users and items the steps meet for the first time, drawn
        in River's order: at each step the user, then the item."""
        n_items = int(seq_item.max()) + 1
        if n_items > self.item_matrix.shape[0]:
            size = max(n_items, 2 * self.item_matrix.shape[0])
            grow = size - self.item_matrix.shape[0]
            self.item_matrix = np.vstack([self.item_matrix, np.zeros((grow, self.n_factors))])
            self.item_known = np.concatenate([self.item_known, np.zeros(grow, bool)])
        new_user = np.isnan(self.user_matrix[seq_user, 0])
        new_item = ~self.item_known[seq_item]
        if not (new_user.any() or new_item.any()):
            return
        # first step of each new user / item; creation key = 2 * step (+1 for an item)
        uu, ufirst = np.unique(seq_user[new_user], return_index=True)
        ii, ifirst = np.unique(seq_item[new_item], return_index=True)
        ustep = np.flatnonzero(new_user)[ufirst]
        istep = np.flatnonzero(new_item)[ifirst]
        key = np.concatenate([2 * ustep, 2 * istep + 1])
        order = np.argsort(key, kind="stable")
        draws = self._init.normal(0.0, self.init_std, size=(order.shape[0], self.n_factors))
        factors = np.empty_like(draws)
        factors[order] = draws
        self.user_matrix[uu] = factors[: uu.shape[0]]
        self.item_matrix[ii] = factors[uu.shape[0] :]
        self.item_known[ii] = True

    def scores(self, user: str, idx: IntArray) -> FloatArray:
        """Logits `u · vᵢ` for items `idx` (0 for an unknown user or item)."""
        r = self.users.get(user)
        if r is None:
            return np.zeros(idx.shape[0])
        u = self.user_matrix[r]
        m = self.item_matrix
        inside = idx < m.shape[0]
        if bool(inside.all()):
            out: FloatArray = m[idx] @ u
            return out
        res = np.zeros(idx.shape[0])
        res[inside] = m[idx[inside]] @ u
        return res

    def scores_many(self, users: Sequence[str], idx: IntArray, offsets: IntArray) -> FloatArray:
        """`scores(users[u], idx[offsets[u]:offsets[u + 1]])` for every u, as one gather
        and one row-wise product (0 for an unknown user or item)."""
        n = idx.shape[0]
        rows = np.array([self.users.get(u, -1) for u in users], np.int64)
        row = np.repeat(rows, np.diff(offsets))
        m = self.item_matrix
        ok = (row >= 0) & (idx < m.shape[0])
        out = np.zeros(n)
        if n and ok.any():
            out[ok] = gathered_rowdot(m, idx[ok], self.user_matrix, row[ok])
        return out

    def forget_user(self, user: str) -> None:
        """Drop the user's factors (a returning user starts from fresh random ones); the
        row is reused by the next new user, so the matrix stays as large as the users held."""
        r = self.users.pop(user, None)
        if r is not None:
            self.user_matrix[r] = np.nan
            self._free_rows.append(r)

    def n_users(self) -> int:
        return len(self.users)


def _waves(users: IntArray, items: IntArray) -> IntArray:
    """Each step's wave: one more than the latest wave of an earlier step with its user or
    its item (0 for a step that shares neither).

    >>> _waves(np.array([0, 1, 0, 2]), np.array([5, 5, 6, 7])).tolist()
    [0, 1, 1, 0]
    """
    last_u: dict[int, int] = {}
    last_i: dict[int, int] = {}
    out = []
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        w = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
        last_u[u] = last_i[i] = w
        out.append(w)
    return np.array(out, np.int64)


class RatingModel:
    """Explicit ratings: River BiasedMF, prediction clipped to [`low`, `high`].

    >>> m = RatingModel()
    >>> m.predict("u1", "i1")
    3.5
    >>> for _ in range(20):
    ...     m.learn("u1", "i1", 5.0)
    >>> m.predict("u1", "i1") > 4.0
    True
    """

    def __init__(
        self,
        n_factors: int = 10,
        bias_lr: float = 0.01,
        latent_lr: float = 0.02,
        l2_bias: float = 0.01,
        l2_latent: float = 0.1,
        low: float = 0.5,
        high: float = 5.0,
        prior: float = 3.5,
        seed: int = 0,
    ) -> None:
        self.low = low
        self.high = high
        self.prior = prior
        self.n = 0
        self.model: Any = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(bias_lr),
            latent_optimizer=optim.SGD(latent_lr),
            l2_bias=l2_bias,
            l2_latent=l2_latent,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.05, seed=seed),
            seed=seed,
        )

    def predict(self, user: str, item: str) -> float:
        """The predicted rating (the prior before any rating)."""
        if self.n == 0:
            return self.prior
        m = self.model
        y = m.global_mean.get() + m.u_biases.get(user, 0.0) + m.i_biases.get(item, 0.0)
        u = m.u_latents.get(user)
        v = m.i_latents.get(item)
        if u is not None and v is not None:
            y += float(np.dot(u, v))
        return float(min(max(y, self.low), self.high))

    def learn(self, user: str, item: str, rating: float) -> None:
        self.model.learn_one(user, item, rating)
        self.n += 1

    def forget_user(self, user: str) -> None:
        """Drop the user's bias and factors (a returning user predicts from the item side)."""
        self.model.u_biases.pop(user, None)
        self.model.u_latents.pop(user, None)


class Ranker:
    """Logistic regression over named features; scores a whole candidate matrix at once."""

    def __init__(self, feature_names: Sequence[str], lr: float = 0.05, l2: float = 1e-5) -> None:
        self.feature_names = tuple(feature_names)
        self.model: Any = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2, intercept_lr=lr)
        self._w: FloatArray | None = None
        self._b = 0.0
        self.n = 0

    def weights(self) -> tuple[FloatArray, float]:
        """The model's weights as a numpy vector (feature order) and its intercept."""
        if self._w is None:
            wd: dict[str, Any] = self.model.weights
            self._w = np.array([float(wd.get(f, 0.0)) for f in self.feature_names])
            self._b = float(self.model.intercept)
        return self._w, self._b

    def score(self, x: FloatArray) -> FloatArray:
        """Logits for every row of `x` (n × features)."""
        w, b = self.weights()
        out: FloatArray = x @ w + b
        return out

    def learn(self, x: FloatArray, y: NDArray[Any]) -> None:
        """One SGD step per row (River `learn_one`), in row order."""
        names = self.feature_names
        for row, label in zip(x.tolist(), y.tolist(), strict=True):
            self.model.learn_one(dict(zip(names, row, strict=True)), bool(label))
        self.n += len(y)
        self._w = None


class PairwiseRanker:
    """A linear ranker trained pairwise (BPR): for a positive row x⁺ and negatives x⁻ⱼ of the
    same candidate set, one AdaGrad step on `−Σⱼ log σ(w · (x⁺ − x⁻ⱼ)/s) + l2·|w|²`, where
    `s` is the running standard deviation of every feature over the rows it has learned from
    (Welford), so features of any scale learn at the same pace. Scores are `(x/s) · w`; it
    ranks within a candidate set, so there is no intercept. `prior` = the weights before any
    step (a sensible hand-set blend). Plain numpy: one step for a whole set of negatives.

    >>> r = PairwiseRanker(["a", "b"], lr=0.5)
    >>> for _ in range(20):
    ...     r.learn(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [0.2, 0.9]]))
    >>> s = r.score(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> bool(s[0] > s[1]), r.n
    (True, 20)
    """

    #: steps whose feature scales are computed together (bounds `learn_many`'s arrays)
    STEP_CHUNK = 256

    def __init__(
        self,
        feature_names: Sequence[str],
        lr: float = 0.05,
        l2: float = 1e-4,
        prior: Sequence[float] | None = None,
    ) -> None:
        f = len(feature_names)
        self.feature_names = tuple(feature_names)
        self.lr = lr
        self.l2 = l2
        self.w: FloatArray = np.zeros(f) if prior is None else np.array(prior, dtype=np.float64)
        self._g2: FloatArray = np.full(f, 1e-8)
        self._rows = 0
        self._mean: FloatArray = np.zeros(f)
        self._m2: FloatArray = np.zeros(f)
        self._scale: FloatArray = np.ones(f)
        self.n = 0

    def score(self, x: FloatArray) -> FloatArray:
        """Scores of every row of `x` (n × features)."""
        out: FloatArray = x @ (self.w / self._scale)
        return out

    def _scales(self, x: FloatArray, steps: IntArray) -> FloatArray:
        """The running standard deviation after each step (rows `x`, step `steps[r]` for row
        r: 0, 1, ... non-decreasing, every step with a row), and the Welford state moved past
        all of them.

        Sums of deviations from the mean before the batch, prefix-summed over the steps
        (Chan et al. merged once per step): mean_s = mean₀ + S1_s/N_s and
        M2_s = M2₀ + S2_s − S1_s²/N_s."""
        n_steps = int(steps[-1]) + 1 if steps.shape[0] else 0
        dev = x - self._mean
        first = np.flatnonzero(np.diff(steps, prepend=-1))  # every step has a row
        s1 = np.cumsum(np.add.reduceat(dev, first, axis=0), axis=0)
        s2 = np.cumsum(np.add.reduceat(dev * dev, first, axis=0), axis=0)
        tot = self._rows + np.cumsum(np.diff(first, append=steps.shape[0])).astype(np.float64)[:, None]
        m2 = self._m2 + s2 - s1 * s1 / tot
        std = np.sqrt(np.maximum(m2, 0.0) / np.maximum(tot - 1.0, 1.0))
        scale: FloatArray = np.where((std > 1e-6) & (tot > 1.0), std, 1.0)
        if n_steps:
            self._mean = self._mean + s1[-1] / tot[-1]
            self._m2 = m2[-1]
            self._rows = int(tot[-1, 0])
            # a step with a single row overall keeps the previous scale, as Welford does
            first_scaled = tot[:, 0] > 1.0
            scale[~first_scaled] = self._scale
            self._scale = scale[-1].copy()
        return scale

    def learn(self, x_pos: FloatArray, x_neg: FloatArray, weight: float = 1.0) -> None:
        """One step for positive row `x_pos` against negative rows `x_neg` (m × features)."""
        if x_neg.shape[0] == 0:
            return
        self.learn_many(x_pos[None, :], x_neg[None, :, :], np.array([x_neg.shape[0]]), np.array([weight]))

    def learn_many(self, x_pos: FloatArray, x_neg: FloatArray, n_neg: IntArray, weights: FloatArray) -> None:
        """`learn(x_pos[s], x_neg[s, :n_neg[s]], weights[s])` for every step s in order
        (`x_neg` is s × m × features, rows past `n_neg[s]` are padding; steps without
        negatives are skipped). The feature scales of `STEP_CHUNK` steps at a time are
        computed at once (they do not depend on the weights; the chunk bounds the arrays, a
        few copies of chunk × (m + 1) × features floats); the AdaGrad steps run one by one
        on small arrays.

        >>> r = PairwiseRanker(["a", "b"], lr=0.5)
        >>> neg = np.array([[[0.0, 1.0], [0.2, 0.9]]] * 20)
        >>> r.learn_many(np.array([[1.0, 0.0]] * 20), neg, np.full(20, 2), np.ones(20))
        >>> s = r.score(np.array([[1.0, 0.0], [0.0, 1.0]]))
        >>> bool(s[0] > s[1]), r.n
        (True, 20)
        """
        live = np.flatnonzero(n_neg > 0)
        for a in range(0, live.shape[0], self.STEP_CHUNK):
            steps = live[a : a + self.STEP_CHUNK]
            self._learn_steps(x_pos[steps], x_neg[steps], n_neg[steps], weights[steps])

    def _learn_steps(
        self, x_pos: FloatArray, x_neg: FloatArray, n_neg: IntArray, weights: FloatArray
    ) -> None:
        """`learn_many` for steps that all have negatives."""
        n_steps, m = x_neg.shape[:2]
        valid = np.arange(m)[None, :] < n_neg[:, None]
        # the rows each step observes: its positive, then its negatives
        rows = np.concatenate([x_pos[:, None, :], x_neg], axis=1)
        mask = np.concatenate([np.ones((n_steps, 1), bool), valid], axis=1)
        steps = np.broadcast_to(np.arange(n_steps)[:, None], mask.shape)[mask]
        scale = self._scales(rows[mask], steps)
        d = (x_pos[:, None, :] - x_neg) / scale[:, None, :]
        d[~valid] = 0.0  # a zero row adds nothing to the gradient
        w, g2 = self.w, self._g2
        lr, l2 = self.lr, self.l2
        for s in range(n_steps):
            ds = d[s]
            z = np.minimum(np.maximum(ds @ w, -30.0), 30.0)
            g = 1.0 / (1.0 + np.exp(z))  # = 1 − σ(z)
            grad = (-weights[s]) * (g @ ds) + l2 * w
            g2 += grad * grad
            w -= lr * grad / np.sqrt(g2)
        self.n += n_steps

    def weights(self) -> dict[str, float]:
        """The weights per feature, on the standardised scale (for inspection)."""
        return dict(zip(self.feature_names, self.w.tolist(), strict=True))
