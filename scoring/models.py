"""The online models, all River, all learning one event at a time after predicting it.

- `ImplicitMF`: `river.reco.FunkMF` with the logistic loss on implicit feedback. An event is
  a positive whose loss weight is the event type's weight; `negatives` items drawn from
  recent traffic (so, in proportion to popularity) are negatives of weight 1. Item factors
  are mirrored into a numpy matrix after each update, so scoring 200 candidates is one
  matrix-vector product.
- `RatingModel`: `river.reco.BiasedMF` on `rate` events, predictions clipped to the scale.
- `PairwiseRanker` (the recommender's ranker): a linear model over standardised candidate
  features trained pairwise (BPR, AdaGrad) in numpy — the event's item against negatives
  sampled from the same candidate set, so it learns to rank *within* candidates.
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

from scoring.types import FloatArray

__all__ = ["ImplicitMF", "PairwiseRanker", "Ranker", "RatingModel"]

IntArray = NDArray[np.int64]


class ImplicitMF:
    """Implicit-feedback matrix factorization (River FunkMF, logistic loss, sampled negatives).

    >>> mf = ImplicitMF(n_factors=4, seed=1)
    >>> for _ in range(30):
    ...     mf.learn("u1", "a", 0, weight=1.0, negatives=[("b", 1)])
    >>> s = mf.scores("u1", np.array([0, 1]))
    >>> bool(s[0] > s[1])
    True
    """

    def __init__(
        self, n_factors: int = 16, lr: float = 0.05, l2: float = 0.001, init_std: float = 0.1, seed: int = 0
    ) -> None:
        self.n_factors = n_factors
        self.model: Any = reco.FunkMF(
            n_factors=n_factors,
            optimizer=optim.SGD(lr),
            loss=optim.losses.Log(),
            l2=l2,
            initializer=optim.initializers.Normal(mu=0.0, sigma=init_std, seed=seed),
            seed=seed,
        )
        # the River loss object is shared with the model (its positive weight is set per event)
        self.loss: Any = self.model.loss
        self.item_matrix: FloatArray = np.zeros((64, n_factors))

    def _mirror(self, item: str, index: int) -> None:
        if index >= self.item_matrix.shape[0]:
            grow = max(index + 1, 2 * self.item_matrix.shape[0]) - self.item_matrix.shape[0]
            self.item_matrix = np.vstack([self.item_matrix, np.zeros((grow, self.n_factors))])
        self.item_matrix[index] = self.model.i_latents[item]

    def learn(
        self, user: str, item: str, index: int, weight: float, negatives: Sequence[tuple[str, int]]
    ) -> None:
        """One positive (`weight` = its event type's weight) and its sampled negatives
        (item id, dense index)."""
        self.loss.weight_pos = weight
        self._step(user, item, 1)
        self._mirror(item, index)
        for neg, j in negatives:
            if neg != item:
                self._step(user, neg, 0)
                self._mirror(neg, j)

    def learn_many(self, steps: Sequence[tuple[str, str, int, float, Sequence[tuple[str, int]]]]) -> None:
        """`learn(user, item, index, weight, negatives)` for each step in order, computed in
        waves: a step goes into the first wave after the last one that touched its user or
        its item, so every step reads exactly the factors it would read in order, and a
        wave (distinct users, distinct items) is a few array operations for all its steps.
        The same arithmetic as `_step` (dot products summed in another order: equal to
        rounding)."""
        model = self.model
        ul, il = model.u_latents, model.i_latents
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        index: dict[str, int] = {}
        s_user: list[int] = []
        s_item: list[int] = []
        s_y: list[float] = []
        s_w: list[float] = []
        s_wave: list[int] = []
        u_wave: list[int] = []
        i_wave: list[int] = []
        weight_neg = float(self.loss.weight_neg)
        for user, item, idx, weight, negatives in steps:
            u = users.get(user)
            if u is None:
                u = users[user] = len(users)
                u_wave.append(-1)
            for it, j, y, w in ((item, idx, 1.0, weight), *((n, jn, 0.0, weight_neg) for n, jn in negatives)):
                if y == 0.0 and it == item:
                    continue
                ul[user]  # (creates missing latents in River's order: user, item)
                i = items.get(it)
                if i is None:
                    il[it]
                    i = items[it] = len(items)
                    i_wave.append(-1)
                    index[it] = j
                wave = max(u_wave[u], i_wave[i]) + 1
                u_wave[u] = i_wave[i] = wave
                s_user.append(u)
                s_item.append(i)
                s_y.append(y)
                s_w.append(w)
                s_wave.append(wave)
        if not s_user:
            return
        big_u = np.stack([ul[x] for x in users])
        big_v = np.stack([il[x] for x in items])
        su, si = np.array(s_user), np.array(s_item)
        sy, sw = np.array(s_y), np.array(s_w)
        order = np.argsort(np.array(s_wave), kind="stable")
        bounds = np.flatnonzero(np.diff(np.array(s_wave)[order])) + 1
        l2, clip = model.l2, model.clip_gradient
        lr_u, lr_i = model.u_optimizer.learning_rate, model.i_optimizer.learning_rate
        for part in np.split(order, bounds):
            wu, wi = su[part], si[part]
            uu, vv = big_u[wu], big_v[wi]
            sign = 2.0 * sy[part] - 1.0  # labels {0, 1} as {-1, +1}
            z = np.einsum("ij,ij->i", uu, vv) * sign
            wt = sw[part]
            with np.errstate(over="ignore"):  # River's Log.gradient, branch for branch
                grad = np.where(
                    z > 18.0,
                    wt * np.exp(-z) * -sign,
                    np.where(z < -18.0, wt * -sign, wt * -sign / (np.exp(z) + 1.0)),
                )
            g = np.clip(grad, -clip, clip)[:, None]
            big_u[wu] = uu - lr_u * (g * vv + l2 * uu)
            big_v[wi] = vv - lr_i * (g * uu + l2 * vv)
        for x, r in users.items():
            ul[x][:] = big_u[r]
        for x, r in items.items():
            il[x][:] = big_v[r]
            self._mirror(x, index[x])
        model.u_optimizer.n_iterations += len(s_user)
        model.i_optimizer.n_iterations += len(s_user)

    def _step(self, user: str, item: str, y: int) -> None:
        """`FunkMF.learn_one(user, item, y)`, the same arithmetic in the same order on the
        same River state, without its per-call dict and optimizer overhead (a quarter of
        the time; `tests/test_scoring_models.py` checks it bit for bit)."""
        model = self.model
        u = model.u_latents[user]  # (creates missing latents in River's order: user, item)
        v = model.i_latents[item]
        g = self.loss.gradient(y, np.dot(u, v).item())
        g = max(min(g, model.clip_gradient), -model.clip_gradient)
        u_grad = g * v + model.l2 * u
        v_grad = g * u + model.l2 * v
        u_opt, i_opt = model.u_optimizer, model.i_optimizer
        u -= u_opt.learning_rate * u_grad
        v -= i_opt.learning_rate * v_grad
        u_opt.n_iterations += 1
        i_opt.n_iterations += 1

    def scores(self, user: str, idx: IntArray) -> FloatArray:
        """Logits `u · vᵢ` for items `idx` (0 for an unknown user)."""
        u = self.model.u_latents.get(user)
        if u is None:
            return np.zeros(idx.shape[0])
        m = self.item_matrix
        inside = idx < m.shape[0]
        if bool(inside.all()):
            out: FloatArray = m[idx] @ u
            return out
        res = np.zeros(idx.shape[0])
        res[inside] = m[idx[inside]] @ u
        return res

    def forget_user(self, user: str) -> None:
        """Drop the user's factors (a returning user starts from fresh random ones)."""
        self.model.u_latents.pop(user, None)

    def n_users(self) -> int:
        return len(self.model.u_latents)


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

    def _observe(self, x: FloatArray) -> None:
        # batched Welford (Chan et al.) over the rows of x
        m = x.shape[0]
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        n = self._rows
        tot = n + m
        delta = mean - self._mean
        self._mean = self._mean + delta * (m / tot)
        self._m2 = self._m2 + m2 + delta**2 * (n * m / tot)
        self._rows = tot
        if tot > 1:
            std = np.sqrt(self._m2 / (tot - 1))
            self._scale = np.where(std > 1e-6, std, 1.0)

    def learn(self, x_pos: FloatArray, x_neg: FloatArray, weight: float = 1.0) -> None:
        """One step for positive row `x_pos` against negative rows `x_neg` (m × features)."""
        if x_neg.shape[0] == 0:
            return
        self._observe(np.vstack([x_pos[None, :], x_neg]))
        d = (x_pos[None, :] - x_neg) / self._scale
        z = np.clip(d @ self.w, -30.0, 30.0)
        g = 1.0 / (1.0 + np.exp(z))  # = 1 − σ(z)
        grad = -weight * (g[:, None] * d).sum(axis=0) + self.l2 * self.w
        self._g2 += grad**2
        self.w -= self.lr * grad / np.sqrt(self._g2)
        self.n += 1

    def weights(self) -> dict[str, float]:
        """The weights per feature, on the standardised scale (for inspection)."""
        return dict(zip(self.feature_names, self.w.tolist(), strict=True))
