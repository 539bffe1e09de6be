"""Exploration of one slot: a River ε-greedy bandit picks which source fills it.

Each arm is a candidate source; the arm's offer is that source's best candidate not already
in the list. `river.bandit.EpsilonGreedy` pulls an arm: with probability ε a uniform arm,
else the arm with the best mean reward (the first such in arm order). That rule is known, so
every arm's probability is exact: `ε/n + (1 − ε)·[arm is the best]`, and they sum to 1. The
shown item's propensity is the total probability of the arms that offered it. The reward
(1 if the user's next event is on the explored item, else 0) is given back by `reward`.

>>> ex = SourceExplorer(epsilon=0.2, seed=1)
>>> probs = ex.probabilities(["covis", "trending"])
>>> probs, sum(probs.values())
({'covis': 0.9, 'trending': 0.1}, 1.0)
>>> arm, item, p = ex.choose("u1", {"covis": "a", "trending": "a"})
>>> item, p
('a', 1.0)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from river import bandit

__all__ = ["SourceExplorer"]


class SourceExplorer:
    """ε-greedy over candidate sources for one exploration slot; remembers, per user, the
    last explored (arm, item) until the user's next event (at most `max_pending` users)."""

    def __init__(self, epsilon: float = 0.1, seed: int = 0, max_pending: int = 100_000) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be within 0..1, got {epsilon!r}")
        self.epsilon = epsilon
        self.policy: Any = bandit.EpsilonGreedy(epsilon=epsilon, seed=seed)
        self.max_pending = max_pending
        self.pending: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.pulls = 0
        self.rewards = 0.0

    def _best(self, arms: Sequence[str]) -> str:
        # exactly River's exploit rule (EpsilonGreedy._pull): max mean reward, first in order
        rewards = self.policy._rewards
        best: str = max(arms, key=lambda a: float(rewards[a].get()))
        return best

    def probabilities(self, arms: Sequence[str]) -> dict[str, float]:
        """P(arm) for the next pull among `arms` (sums to 1)."""
        n = len(arms)
        if n == 0:
            return {}
        best = self._best(arms)
        eps = self.policy.current_epsilon
        return {a: eps / n + (1.0 - eps) * (a == best) for a in arms}

    def choose(self, user_id: str, offers: Mapping[str, str]) -> tuple[str, str, float]:
        """Pull an arm among `offers` (arm -> item); returns (arm, item, propensity)."""
        arms = list(offers)
        probs = self.probabilities(arms)
        arm: str = self.policy.pull(arms)
        item = offers[arm]
        propensity = float(sum(p for a, p in probs.items() if offers[a] == item))
        self.pending[user_id] = (arm, item)
        self.pending.move_to_end(user_id)
        if len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
        self.pulls += 1
        return arm, item, propensity

    def reward(self, user_id: str, item_id: str) -> float | None:
        """Credit the arm explored for `user_id` with whether `item_id` was its item."""
        pend = self.pending.pop(user_id, None)
        if pend is None:
            return None
        arm, item = pend
        r = 1.0 if item == item_id else 0.0
        self.policy.update(arm, r)
        self.rewards += r
        return r
