"""Feature names: the one source of truth for the Feast repo, the store and the states.

A half-life becomes a suffix in the largest whole unit (d, h, m, else s), so
`click_1h` is the click count with a one-hour half-life:

>>> [half_life_suffix(s) for s in (3600, 86400, 604800, 60, 90)]
['1h', '1d', '7d', '1m', '90s']
>>> count_name("click", 3600)
'click_1h'

`user_feature_kinds(config)` / `item_feature_kinds(config)` map every feature name, in a
stable order, to its kind: "float", "int", "str", "list[float]" or "list[str]" (what the
Feast repo turns into Float64, Int64, String, Array(Float64), Array(String)).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Literal

from profiles.events import EVENT_TYPES

if TYPE_CHECKING:
    from profiles.user_state import ProfileConfig

__all__ = [
    "FeatureKind",
    "count_name",
    "half_life_suffix",
    "item_feature_kinds",
    "item_feature_names",
    "last_ts_name",
    "popularity_name",
    "total_name",
    "user_feature_kinds",
    "user_feature_names",
]

FeatureKind = Literal["float", "int", "str", "list[float]", "list[str]"]

_UNITS: Final[tuple[tuple[int, str], ...]] = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))

# Fixed names (the per-type and per-half-life ones are built by the functions below).
DISTINCT_ITEMS: Final = "distinct_items"
TOP_CATEGORIES: Final = "top_categories"
TOP_CATEGORY_SCORES: Final = "top_category_scores"
NEXT_CATEGORIES: Final = "next_categories"
NEXT_CATEGORY_SCORES: Final = "next_category_scores"
HISTORY_ITEMS: Final = "history_items"
HISTORY_ITEM_TS: Final = "history_item_ts"
UPDATED_AT: Final = "updated_at"
SESSION_ID: Final = "session_id"
SESSION_START_TS: Final = "session_start_ts"
SESSION_LAST_TS: Final = "session_last_ts"
SESSION_LENGTH: Final = "session_length"
SESSION_DURATION_S: Final = "session_duration_s"
SESSION_ITEMS: Final = "session_items"
SESSION_ITEM_TS: Final = "session_item_ts"
SESSION_EMBEDDING: Final = "session_embedding"
SESSION_EMBEDDING_WEIGHT: Final = "session_embedding_weight"
CONVERSION_RATE: Final = "conversion_rate"

_SESSION_KINDS: Final[dict[str, FeatureKind]] = {
    SESSION_ID: "str",
    SESSION_START_TS: "float",
    SESSION_LAST_TS: "float",
    SESSION_LENGTH: "int",
    SESSION_DURATION_S: "float",
    SESSION_ITEMS: "list[str]",
    SESSION_ITEM_TS: "list[float]",
    SESSION_EMBEDDING: "list[float]",
    SESSION_EMBEDDING_WEIGHT: "float",
}


def half_life_suffix(seconds: float) -> str:
    """Suffix of a half-life in the largest unit that divides it exactly.

    >>> half_life_suffix(1800), half_life_suffix(7200.0), half_life_suffix(0.5)
    ('30m', '2h', '0.5s')
    """
    if not seconds > 0:
        raise ValueError(f"half-life must be positive, got {seconds!r}")
    if float(seconds).is_integer():
        whole = int(seconds)
        for unit, letter in _UNITS:
            if whole % unit == 0:
                return f"{whole // unit}{letter}"
    return f"{seconds:g}s"


def count_name(event_type: str, half_life_s: float) -> str:
    """Decayed count of `event_type` events: `click_1h`."""
    return f"{event_type}_{half_life_suffix(half_life_s)}"


def last_ts_name(event_type: str) -> str:
    """Event time of the latest `event_type` event: `last_click_ts`.

    >>> last_ts_name("add_to_cart")
    'last_add_to_cart_ts'
    """
    return f"last_{event_type}_ts"


def total_name(event_type: str) -> str:
    """Lifetime (undecayed) count of `event_type` events: `click_total`."""
    return f"{event_type}_total"


def popularity_name(half_life_s: float) -> str:
    """Type-weighted decayed interaction sum of an item: `popularity_1d`.

    >>> popularity_name(86400)
    'popularity_1d'
    """
    return f"popularity_{half_life_suffix(half_life_s)}"


def _check_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"two features would be named {n!r}: half-lives must differ")
        seen.add(n)


def user_feature_kinds(config: ProfileConfig) -> dict[str, FeatureKind]:
    """Every user feature `UserState.to_features()` produces, in order, with its kind.

    >>> from profiles.user_state import ProfileConfig
    >>> kinds = user_feature_kinds(ProfileConfig())
    >>> kinds["click_1h"], kinds["click_total"], kinds["top_categories"]
    ('float', 'int', 'list[str]')
    >>> len(kinds)
    42
    """
    kinds: dict[str, FeatureKind] = {}
    for t in EVENT_TYPES:
        for h in config.half_lives_s:
            kinds[count_name(t, h)] = "float"
    for t in EVENT_TYPES:
        kinds[last_ts_name(t)] = "float"
    for t in EVENT_TYPES:
        kinds[total_name(t)] = "int"
    kinds[DISTINCT_ITEMS] = "int"
    kinds[TOP_CATEGORIES] = "list[str]"
    kinds[TOP_CATEGORY_SCORES] = "list[float]"
    kinds[NEXT_CATEGORIES] = "list[str]"
    kinds[NEXT_CATEGORY_SCORES] = "list[float]"
    kinds[HISTORY_ITEMS] = "list[str]"
    kinds[HISTORY_ITEM_TS] = "list[float]"
    kinds.update(_SESSION_KINDS)
    kinds[UPDATED_AT] = "float"
    _check_unique([count_name(t, h) for t in EVENT_TYPES for h in config.half_lives_s])
    return kinds


def item_feature_kinds(config: ProfileConfig) -> dict[str, FeatureKind]:
    """Every item feature `ItemState.to_features()` produces, in order, with its kind.

    >>> from profiles.user_state import ProfileConfig
    >>> list(item_feature_kinds(ProfileConfig()))[-5:]
    ['popularity_1h', 'popularity_1d', 'popularity_7d', 'conversion_rate', 'updated_at']
    """
    kinds: dict[str, FeatureKind] = {}
    for t in EVENT_TYPES:
        for h in config.half_lives_s:
            kinds[count_name(t, h)] = "float"
    for t in EVENT_TYPES:
        kinds[total_name(t)] = "int"
    for h in config.half_lives_s:
        kinds[popularity_name(h)] = "float"
    kinds[CONVERSION_RATE] = "float"
    kinds[UPDATED_AT] = "float"
    _check_unique([count_name(t, h) for t in EVENT_TYPES for h in config.half_lives_s])
    return kinds


def user_feature_names(config: ProfileConfig) -> tuple[str, ...]:
    """Names of the user features, in `to_features()` order."""
    return tuple(user_feature_kinds(config))


def item_feature_names(config: ProfileConfig) -> tuple[str, ...]:
    """Names of the item features, in `to_features()` order.

    >>> from profiles.user_state import ProfileConfig
    >>> item_feature_names(ProfileConfig())[:3]
    ('view_1h', 'view_1d', 'view_7d')
    """
    return tuple(item_feature_kinds(config))
