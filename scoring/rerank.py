"""Re-ranking: exclusions, business rules, MMR diversity and a per-category cap.

`Rule`s come from configuration: `filter` drops matching items, `boost` multiplies their
relevance by `factor`. An item matches when it has `category` (if given) and its attribute
`attribute` equals `value` (if given). `RuleSet` compiles rules into boolean masks over the
catalog, cached until the catalog changes.

`select(relevance, vectors, categories, allowed, k, ...)` then picks the list greedily:
maximal marginal relevance `λ·relᵢ − (1 − λ)·max_{j chosen} cos(vᵢ, vⱼ)` over the
`pool` most relevant allowed items (λ = 1: plain relevance order), skipping items whose
first category already has `max_per_category` items in the list.

>>> rel = np.array([0.9, 0.8, 0.7, 0.1])
>>> vec = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
>>> cats = np.array([0, 0, 1, 1])
>>> ok = np.array([True, True, True, True])
>>> select(rel, vec, cats, ok, k=3, mmr_lambda=1.0).tolist()
[0, 1, 2]
>>> select(rel, vec, cats, ok, k=3, mmr_lambda=0.5).tolist()
[0, 2, 1]
>>> select(rel, vec, cats, ok, k=3, max_per_category=1).tolist()
[0, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from scoring.catalog import ItemCatalog
from scoring.types import FloatArray

__all__ = ["RerankConfig", "Rule", "RuleSet", "select"]

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Rule:
    """A business rule: `filter` or `boost` (relevance × `factor`) items that match.

    >>> Rule("boost", category="Comedy", factor=1.5).matches(("Comedy",), {})
    True
    >>> Rule("filter", attribute="brand", value="x").matches(("Comedy",), {"brand": "y"})
    False
    """

    action: Literal["filter", "boost"]
    category: str | None = None
    attribute: str | None = None
    value: Any = None
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.action not in ("filter", "boost"):
            raise ValueError(f"rule action must be 'filter' or 'boost', got {self.action!r}")
        if self.category is None and self.attribute is None:
            raise ValueError("a rule needs a category or an attribute to match")
        if not self.factor >= 0.0:
            raise ValueError(f"rule factor must be >= 0, got {self.factor!r}")

    def matches(self, categories: Sequence[str], attributes: Mapping[str, Any]) -> bool:
        if self.category is not None and self.category not in categories:
            return False
        return self.attribute is None or attributes.get(self.attribute) == self.value


@dataclass(frozen=True, slots=True)
class RerankConfig:
    """Re-ranking settings (`mmr_lambda` = 1.0 disables diversity).

    Exclusion policy: with `exclude_seen`, the ranker's list never holds an item the user
    interacted with; the user's recent items come back through the re-engagement source
    (`scoring.repeat`) unless one of their events has a type in `exclude_types` (a bought
    or rated item is never offered again; a viewed, clicked or carted one may be).
    `exclude_types=None`: every seen item stays excluded (no re-engagement)."""

    exclude_seen: bool = True
    exclude_types: tuple[str, ...] | None = ("purchase", "rate")
    mmr_lambda: float = 1.0
    mmr_pool: int = 50
    max_per_category: int | None = None
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be within 0..1, got {self.mmr_lambda!r}")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValueError(f"max_per_category must be >= 1, got {self.max_per_category!r}")


class RuleSet:
    """Rules compiled to masks over the catalog: `keep[i]` and `boost[i]` per item."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._n = 0
        self._generation = -1
        self._keep: BoolArray = np.ones(0, bool)
        self._boost: FloatArray = np.ones(0)

    def _refresh(self, catalog: ItemCatalog) -> None:
        n = len(catalog)
        start = self._n if catalog.generation == self._generation else 0
        if start == n:
            return
        keep = np.ones(n, bool)
        boost = np.ones(n)
        keep[:start] = self._keep[:start]
        boost[:start] = self._boost[:start]
        for i in range(start, n):
            cats, attrs = catalog.item_categories[i], catalog.item_attributes[i]
            for r in self.rules:
                if r.matches(cats, attrs):
                    if r.action == "filter":
                        keep[i] = False
                    else:
                        boost[i] *= r.factor
        self._keep, self._boost, self._n = keep, boost, n
        self._generation = catalog.generation

    def apply(
        self, catalog: ItemCatalog, idx: IntArray, relevance: FloatArray
    ) -> tuple[BoolArray, FloatArray]:
        """(allowed mask, boosted relevance) for the candidates `idx`."""
        if not self.rules:
            return np.ones(idx.shape[0], bool), relevance
        self._refresh(catalog)
        return self._keep[idx], relevance * self._boost[idx]


def select(
    relevance: FloatArray,
    vectors: FloatArray,
    categories: IntArray,
    allowed: BoolArray,
    k: int,
    mmr_lambda: float = 1.0,
    max_per_category: int | None = None,
    pool: int = 50,
) -> IntArray:
    """Positions of the chosen candidates, in list order (see the module doc).

    `vectors` are unit rows; `categories` the first category id of each candidate (-1 =
    none, never capped).
    """
    cand = np.flatnonzero(allowed)
    if cand.shape[0] == 0 or k <= 0:
        return np.zeros(0, np.int64)
    order = cand[np.argsort(-relevance[cand], kind="stable")]
    if mmr_lambda >= 1.0:
        if max_per_category is None:
            return order[:k].astype(np.int64)
        return _capped(order, categories, k, max_per_category, [], {})
    head = order[: max(pool, k)]
    rel = relevance[head]
    v = vectors[head]
    max_sim = np.zeros(head.shape[0])
    blocked = np.zeros(head.shape[0], bool)
    counts: dict[int, int] = {}
    chosen: list[int] = []
    for _ in range(min(k, head.shape[0])):
        mmr = mmr_lambda * rel - (1.0 - mmr_lambda) * max_sim
        mmr[blocked] = -np.inf
        j = int(np.argmax(mmr))
        if blocked[j]:
            break
        chosen.append(int(head[j]))
        blocked[j] = True
        c = int(categories[head[j]])
        if max_per_category is not None and c >= 0:
            counts[c] = counts.get(c, 0) + 1
            if counts[c] >= max_per_category:
                blocked |= categories[head] == c
        np.maximum(max_sim, v @ v[j], out=max_sim)
    if len(chosen) < k and head.shape[0] < order.shape[0]:
        rest = order[head.shape[0] :]
        if max_per_category is None:
            chosen.extend(rest[: k - len(chosen)].tolist())
        else:
            return _capped(rest, categories, k, max_per_category, chosen, counts)
    return np.array(chosen, dtype=np.int64)


def _capped(
    order: IntArray, categories: IntArray, k: int, cap: int, chosen: list[int], counts: dict[int, int]
) -> IntArray:
    for p in order.tolist():
        if len(chosen) >= k:
            break
        c = int(categories[p])
        if c >= 0:
            if counts.get(c, 0) >= cap:
                continue
            counts[c] = counts.get(c, 0) + 1
        chosen.append(p)
    return np.array(chosen, dtype=np.int64)
