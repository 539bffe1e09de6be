"""Offline profiles: what the streaming path would hold after an event log, in one pass.

`OfflineProfiles` replays a log (events in file order = each user's arrival order, as
in the stream's partitions) through the same optimized state classes the worker uses
(`UserState`, `ItemState`, `CovisitationIndex`) with the worker's rules
(`profiles.updater.ProfileUpdater._compute_and_write`):

- per event: `covisit_partners(event)` *before* `UserState.apply`, co-visitation
  increments `covisit_pairs(partners, item, ts, config.type_weights[type])`;
  `ItemState.apply`; the trending sets gain `type_weight · 2^((t − L)/h)` per half-life;
  the user's seen set gains the item;
- item categories and vectors come from the catalog (`embeddings.item_vector`; an item
  the catalog does not know gets its id-seeded vector, like `ItemCatalog.unknown`);
- a `ForgetUser` request drops the user's profile and seen set at its place in the log;
  item aggregates keep the user's past contributions (like the updater);
- events after `until` are skipped (counted), and so is a repeated `event_id` (the
  idempotency key of the contract; counted as duplicates).

Outputs:

- `frames()`: one pandas DataFrame per Feast view (`user_activity`, `user_session`,
  `item_stats`, `item_vectors`): the join key, every feature of the view, `event_timestamp`
  (the entity's `updated_at`; for `item_vectors` the catalog record's `created_at`, 0 when
  it has none, as the worker writes it) as tz-aware UTC, and `created` (when the frames
  were built). `arrow_schema(view)` gives the parquet schema Feast maps to the declared
  types (Float64, Int64, String, Array(Float64), Array(Float32) for the embeddings,
  Array(String)): write frames with it, or an all-empty list column is typed `list<null>`.
- `seen_sets()`, `covisitation_sets()`, `trending_sets()`: the non-Feast state in the
  representation `RedisFeatureStore` keeps and `apply_batch.lua` continues from:
  a forward-decayed score table (`DecayedScores`) per item / per half-life, with its
  landmark (the latest increment time of that table; every score is `Σ w·2^((t − L)/h)`).

The trending sets are bounded like the Lua script's (above `2·trending_cap` members the
best `trending_cap` stay), applied per increment here and per batch in the stream: like
every bounded top-N, a capped set can depend on batching once it overflows.

>>> from profiles.events import Event
>>> off = OfflineProfiles(ProfileConfig(), until=7200.0)
>>> for k, (t, item) in enumerate([(0.0, "a"), (60.0, "b"), (9000.0, "c")]):
...     _ = off.add(Event(f"e{k}", "click", "u1", item, t))
>>> off.applied, off.after_until, sorted(off.seen_sets()["u1"])
(2, 1, ['a', 'b'])
>>> off.covisitation_sets()["a"]
DecayedScores(landmark=60.0, scores={'b': 1.0})
>>> frames = off.frames()
>>> row = frames["user_activity"].iloc[0]
>>> row["user_id"], int(row["click_total"]), row["event_timestamp"]
('u1', 2, Timestamp('1970-01-01 00:01:00+0000', tz='UTC'))
>>> str(frames["user_activity"]["click_total"].dtype), str(frames["user_session"]["event_timestamp"].dtype)
('int64', 'datetime64[us, UTC]')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from profiles.covisitation import CovisitationIndex, covisit_pairs
from profiles.decay import NEVER
from profiles.embeddings import item_vector
from profiles.events import Event, ForgetUser, Item
from profiles.item_state import ItemState
from profiles.store import DAY_S, ViewSpec, build_views
from profiles.user_state import ProfileConfig, UserState

__all__ = [
    "ARROW_TYPES",
    "DecayedScores",
    "OfflineProfiles",
    "arrow_schema",
    "compute_offline",
    "to_utc_timestamp",
]

#: Parquet (Arrow) type of each feature kind: what Feast maps to the declared Feast type.
ARROW_TYPES: Final[Mapping[str, pa.DataType]] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "int64": pa.int64(),
    "string": pa.string(),
    "double_list": pa.list_(pa.float64()),
    "float_list": pa.list_(pa.float32()),
    "string_list": pa.list_(pa.string()),
}
_TS_TYPE: Final = pa.timestamp("us", tz="UTC")
_TRENDING_ROW: Final = "*"


@dataclass(frozen=True, slots=True)
class DecayedScores:
    """A forward-decayed score table: `scores[m]` = `Σ w·2^((tᵢ − landmark)/h)`.

    Read at time `T`: `scores[m] · 2^(−(T − landmark)/h)`. Redis keeps it as a ZSET plus
    the landmark in a hash field.
    """

    landmark: float
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Meta:
    categories: tuple[str, ...]
    vector: NDArray[np.float32]


def to_utc_timestamp(ts: float) -> pd.Timestamp:
    """Epoch seconds as a tz-aware UTC timestamp at microsecond precision, rounded like
    `profiles.feast_codec.encode_timestamp` (the `_ts:<view>` the worker writes).

    >>> to_utc_timestamp(1714557600.25)
    Timestamp('2024-05-01 10:00:00.250000+0000', tz='UTC')
    """
    frac, whole = math.modf(ts)
    micros = int(whole) * 1_000_000 + round(frac * 1e6)
    return pd.Timestamp(micros, unit="us", tz="UTC")


def arrow_schema(spec: ViewSpec) -> pa.Schema:
    """The parquet schema of a view's batch source: join key, features, timestamps.

    >>> arrow_schema(build_views()["item_vectors"]).types[:2]
    [DataType(string), ListType(list<item: float>)]
    """
    fields = [pa.field(spec.join_key, pa.string(), nullable=False)]
    fields += [pa.field(name, ARROW_TYPES[kind]) for name, kind in spec.features]
    fields += [pa.field("event_timestamp", _TS_TYPE, nullable=False), pa.field("created", _TS_TYPE)]
    return pa.schema(fields)


class OfflineProfiles:
    """Final user, item, co-visitation and trending state of an event log (module doc).

    `catalog` maps item ids to catalog records (categories, vectors, the `item_vectors`
    rows); `until` (epoch seconds) drops later events; `covis_half_life_s`, `covis_cap`
    `trending_cap` and `trending_half_lives_s` must be the store's (`RedisFeatureStore`
    attributes).
    """

    def __init__(
        self,
        config: ProfileConfig,
        catalog: Mapping[str, Item] | None = None,
        *,
        until: float | None = None,
        covis_half_life_s: float = DAY_S,
        covis_cap: int = 100,
        trending_cap: int = 1000,
        trending_half_lives_s: Sequence[float] | None = None,
    ) -> None:
        self.config = config
        self.catalog: dict[str, Item] = dict(catalog or {})
        self.until = math.inf if until is None else float(until)
        self.users: dict[str, UserState] = {}
        self.items: dict[str, ItemState] = {}
        self.covis = CovisitationIndex(half_life=covis_half_life_s, cap=covis_cap)
        trending_hls = trending_half_lives_s or (config.category_half_life_s,)
        self.trending = {h: CovisitationIndex(half_life=h, cap=trending_cap) for h in trending_hls}
        self._covis_latest: dict[str, float] = {}
        self._latest = NEVER
        self._metas: dict[str, _Meta] = {}
        self._event_ids: set[str] = set()
        #: events applied / skipped (after `until`, repeated event_id) / forget requests
        self.applied = 0
        self.after_until = 0
        self.duplicates = 0
        self.forgotten = 0
        #: users a forget request named (those absent from `users` have no profile left)
        self.forgotten_ids: set[str] = set()

    # ------------------------------------------------------------------ input
    def add(self, event: Event) -> bool:
        """Apply one event in arrival order; False when it is skipped."""
        if not event.ts <= self.until:
            self.after_until += 1
            return False
        if event.event_id in self._event_ids:
            self.duplicates += 1
            return False
        self._event_ids.add(event.event_id)
        cfg = self.config
        uid, iid, ts = event.user_id, event.item_id, event.ts
        state = self.users.get(uid)
        if state is None:
            state = self.users[uid] = UserState(uid, cfg)
        weight = cfg.type_weights[event.type]
        partners = state.covisit_partners(event)
        if partners:
            pairs = covisit_pairs(partners, iid, ts, weight)
            self.covis.update(pairs)
            latest = self._covis_latest
            for a, _, _, _ in pairs:
                if not ts <= latest.get(a, -math.inf):
                    latest[a] = ts
        meta = self._meta(iid)
        state.apply(event, meta.categories, meta.vector)
        item = self.items.get(iid)
        if item is None:
            item = self.items[iid] = ItemState(iid, cfg)
        item.apply(event)
        for index in self.trending.values():
            index.add(_TRENDING_ROW, iid, ts, weight)
        if ts > self._latest:
            self._latest = ts
        self.applied += 1
        return True

    def forget(self, user_id: str) -> None:
        """A `forget_user` request: the user's profile and seen set are dropped here."""
        self.users.pop(user_id, None)
        self.forgotten += 1
        self.forgotten_ids.add(user_id)

    def add_all(self, records: Iterable[Event | ForgetUser]) -> OfflineProfiles:
        """`add` every event and `forget` every request, in order; returns self."""
        for r in records:
            if isinstance(r, ForgetUser):
                self.forget(r.user_id)
            else:
                self.add(r)
        return self

    def _meta(self, item_id: str) -> _Meta:
        meta = self._metas.get(item_id)
        if meta is None:
            item = self.catalog.get(item_id)
            categories = item.categories if item is not None else ()
            vector = item_vector(item, item_id, self.config.embedding_dim)
            meta = self._metas[item_id] = _Meta(categories, vector)
        return meta

    # ------------------------------------------------------------------ non-Feast state
    @property
    def latest_ts(self) -> float:
        """The latest applied event time (-inf before any)."""
        return self._latest

    def seen_sets(self) -> dict[str, set[str]]:
        """Every user's seen items (users forgotten since their events are absent)."""
        return {uid: set(s.seen_items) for uid, s in self.users.items()}

    def covisitation_sets(self) -> dict[str, DecayedScores]:
        """Per source item, its co-visitation neighbours relative to its latest increment."""
        out: dict[str, DecayedScores] = {}
        for a, at in self._covis_latest.items():
            out[a] = DecayedScores(at, dict(self.covis.neighbors(a, at=at)))
        return out

    def trending_sets(self) -> dict[float, DecayedScores]:
        """Per half-life, every item's type-weighted decayed popularity, relative to the
        latest event time (empty when no event was applied)."""
        if self._latest == NEVER:
            return {}
        at = self._latest
        return {
            h: DecayedScores(at, dict(index.neighbors(_TRENDING_ROW, at=at)))
            for h, index in self.trending.items()
        }

    # ------------------------------------------------------------------ Feast frames
    def catalog_rows(self) -> list[Item]:
        """The catalog records written to `item_vectors`: created at or before `until`."""
        return [
            item for item in self.catalog.values() if item.created_at is None or item.created_at <= self.until
        ]

    def frames(self, created: datetime | None = None) -> dict[str, pd.DataFrame]:
        """One DataFrame per Feast view (see the module doc); `created` defaults to now."""
        made = pd.Timestamp(created or datetime.now(tz=UTC)).tz_convert("UTC")
        views = build_views(self.config)
        user_rows: dict[str, list[dict[str, Any]]] = {"user_activity": [], "user_session": []}
        for uid, state in self.users.items():
            feats = state.to_features()
            stamp = to_utc_timestamp(state.updated_at)
            for view in user_rows:
                row: dict[str, Any] = {"user_id": uid}
                row.update((name, feats[name]) for name in views[view].feature_names)
                row["event_timestamp"] = stamp
                user_rows[view].append(row)
        stats: list[dict[str, Any]] = []
        for iid, item_state in self.items.items():
            row = {"item_id": iid, **item_state.to_features()}
            row["event_timestamp"] = to_utc_timestamp(item_state.updated_at)
            stats.append(row)
        vectors: list[dict[str, Any]] = []
        for item in self.catalog_rows():
            meta = self._meta(item.item_id)
            vectors.append(
                {
                    "item_id": item.item_id,
                    "vector": meta.vector,
                    "categories": list(item.categories),
                    "title": item.title,
                    "event_timestamp": to_utc_timestamp(item.created_at or 0.0),
                }
            )
        rows = {**user_rows, "item_stats": stats, "item_vectors": vectors}
        return {name: _frame(views[name], rows[name], made) for name in views}


def _frame(spec: ViewSpec, rows: list[dict[str, Any]], created: pd.Timestamp) -> pd.DataFrame:
    """A view's rows as a DataFrame with the dtypes of `arrow_schema(spec)`."""
    columns: dict[str, Any] = {spec.join_key: pd.Series([r[spec.join_key] for r in rows], dtype=object)}
    for name, kind in spec.features:
        values = [r[name] for r in rows]
        if kind == "double":
            columns[name] = pd.Series(values, dtype=np.float64)
        elif kind == "int64":
            columns[name] = pd.Series(values, dtype=np.int64)
        elif kind == "float_list":
            columns[name] = pd.Series([np.asarray(v, dtype=np.float32) for v in values], dtype=object)
        elif kind == "double_list":
            columns[name] = pd.Series([[float(x) for x in v] for v in values], dtype=object)
        elif kind == "string_list":
            columns[name] = pd.Series([[str(x) for x in v] for v in values], dtype=object)
        else:
            columns[name] = pd.Series(values, dtype=object)
    stamps = [r["event_timestamp"] for r in rows]
    columns["event_timestamp"] = pd.Series(stamps, dtype="datetime64[us, UTC]")
    columns["created"] = pd.Series([created] * len(rows), dtype="datetime64[us, UTC]")
    return pd.DataFrame(columns)


def compute_offline(
    records: Iterable[Event | ForgetUser],
    config: ProfileConfig,
    catalog: Mapping[str, Item] | None = None,
    **kwargs: Any,
) -> OfflineProfiles:
    """`OfflineProfiles(config, catalog, **kwargs).add_all(records)`."""
    return OfflineProfiles(config, catalog, **kwargs).add_all(records)
