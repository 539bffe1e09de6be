"""The online store: every Redis read and write of freshrec, in Feast's format.

The worker never imports Feast (`import feast` costs seconds); `profiles.feast_codec`
writes the exact bytes Feast's Redis online store reads, so `FeatureStore(...)
.get_online_features(...)` sees what the worker wrote and `feast materialize` /
`write_to_online_store` values load back here (proven in `tests/test_feast_repo.py`).

Schema
------
Feature names and kinds come from `profiles.naming` (the one source of truth);
`build_views(config)` groups them into the four Feast feature views and `VIEWS` (default
`ProfileConfig`) is what `feature_repo/definitions.py` declares to Feast. Float lists are
Array(Float64) except the embeddings (`session_embedding`, `vector`): Array(Float32).

Redis key layout (standalone Redis, db from the URL; `ns` = namespace, "freshrec")
----------------------------------------------------------------------------------
==========================================  =============================================
key                                         content
==========================================  =============================================
``feast_key(user_id)``                      HASH, Feast format: views user_activity and
  = entity key ``user_id`` + project        user_session (mmh3 fields, ``_ts:<view>``)
``feast_key(item_id)``                      HASH, Feast format: item_stats, item_vectors
``{ns}:seen:<user_id>``                     SET of item ids the user interacted with
                                            (outside Feast: sets are not Feast values)
``{ns}:last_recs:<user_id>``                last list published to the user (written by
                                            the publisher; deleted by `forget_user`)
``{ns}:offsets:<group>``                    HASH ``<topic>:<partition>`` -> last offset
                                            applied to Redis (the exactly-once fence)
``{ns}:trending:<1h|1d|7d>``                ZSET item -> forward-decayed type-weighted
``{ns}:trending_landmark``                  popularity; HASH 1h|1d|7d -> landmark
``{ns}:covis:<item_id>``                    ZSET neighbour -> forward-decayed weight
``{ns}:covis_landmark``                     HASH item_id -> landmark of its covis ZSET
==========================================  =============================================

Keys never expire (Feast's `key_ttl_seconds` is unset): Feast 0.67 does not apply a
view's `ttl` on online reads either (see feature_repo/README.md), so freshness is judged
from `_ts:<view>`, which `load_users` / `load_items` return.

Redis settings the stack must use: `hash-max-listpack-value 1024` (the 32-float session
embedding is a 133-byte value; above the default 64 the whole hash turns into a
hashtable, several times larger) and `hash-max-listpack-entries >= 64` (a user hash has
44 fields; the default 128 is enough).

>>> [len(v.features) for v in VIEWS.values()]
[33, 9, 25, 3]
>>> VIEWS["item_stats"].ttl_s / 86400, VIEWS["user_session"].features[0]
(30.0, ('session_id', 'string'))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, Protocol, TypeVar, cast
from urllib.parse import unquote, urlparse

import numpy as np
import redis

from profiles import naming as n
from profiles.covisitation import REBASE_HALF_LIVES
from profiles.decay import TINY
from profiles.events import EVENT_TYPES
from profiles.feast_codec import (
    Kind,
    ViewCodec,
    encode_timestamp,
    field_name,
    redis_key,
    timestamp_field,
)
from profiles.store_errors import SchemaError
from profiles.user_state import ProfileConfig

# --------------------------------------------------------------------------- schema

SESSION_EMBEDDING_DIM: Final = 32
FEAST_PROJECT: Final = "freshrec"
DAY_S: Final = 86400.0
#: `list[float]` features stored as Feast Array(Float32) (embeddings); other float lists
#: are Array(Float64).
FLOAT32_FEATURES: Final = frozenset({n.SESSION_EMBEDDING, "vector"})
_KINDS: Final[Mapping[str, Kind]] = {
    "float": "double",
    "int": "int64",
    "str": "string",
    "list[float]": "double_list",
    "list[str]": "string_list",
}

EntityName = Literal["user", "item"]


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """One Feast feature view: its entity, TTL and `(feature, kind)` list, in order."""

    name: str
    entity: EntityName
    join_key: str
    ttl_s: float
    features: tuple[tuple[str, Kind], ...]
    description: str = ""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature names, in schema order."""
        return tuple(f for f, _ in self.features)


def _kind(name: str, kind: str) -> Kind:
    if name in FLOAT32_FEATURES:
        return "float_list"
    return _KINDS[kind]


def build_views(config: ProfileConfig | None = None) -> dict[str, ViewSpec]:
    """The four feature views for a profile configuration (names from `profiles.naming`).

    User features whose name starts with ``session_`` form `user_session` (TTL 1 day),
    the others `user_activity` (30 days); item features form `item_stats` (30 days);
    `item_vectors` (365 days) holds the catalog content.

    >>> views = build_views()
    >>> views["user_session"].feature_names[:3]
    ('session_id', 'session_start_ts', 'session_last_ts')
    >>> dict(views["user_session"].features)["session_embedding"]
    'float_list'
    """
    cfg = config or ProfileConfig()
    user = [(f, _kind(f, k)) for f, k in n.user_feature_kinds(cfg).items()]
    item = [(f, _kind(f, k)) for f, k in n.item_feature_kinds(cfg).items()]
    views = (
        ViewSpec(
            "user_activity",
            "user",
            "user_id",
            30 * DAY_S,
            tuple((f, k) for f, k in user if not f.startswith("session_")),
            "A user's decayed per-type counts (as of updated_at), totals, categories.",
        ),
        ViewSpec(
            "user_session",
            "user",
            "user_id",
            1 * DAY_S,
            tuple((f, k) for f, k in user if f.startswith("session_")),
            f"The user's current session; session_embedding has {cfg.embedding_dim} floats.",
        ),
        ViewSpec(
            "item_stats",
            "item",
            "item_id",
            30 * DAY_S,
            tuple(item),
            "An item's decayed per-type counts (as of updated_at), popularity, conversion.",
        ),
        ViewSpec(
            "item_vectors",
            "item",
            "item_id",
            365 * DAY_S,
            (("vector", "float_list"), ("categories", "string_list"), ("title", "string")),
            "Catalog content of an item: embedding vector, categories, title.",
        ),
    )
    return {v.name: v for v in views}


#: The views of the default configuration: what `feature_repo/` declares to Feast.
VIEWS: Final[Mapping[str, ViewSpec]] = build_views()
USER_VIEW_NAMES: Final = ("user_activity", "user_session")
ITEM_VIEW_NAMES: Final = ("item_stats", "item_vectors")
JOIN_KEYS: Final[Mapping[EntityName, str]] = {"user": "user_id", "item": "item_id"}

# --------------------------------------------------------------------------- results

Partition = tuple[str, int]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What `apply_batch` did.

    `applied` is False when the offset fence refused the batch: nothing was written and
    `offsets` holds the stored offset of each of the batch's partitions (-1: none).
    Drop what is already applied (`drop_applied`), reload the profiles, recompute, retry.
    When True, `offsets` holds the new last offsets; `covis_pairs` counts distinct
    (a, b) pairs (increments are summed per pair), `rebases` landmark rebases, `trimmed`
    members dropped by the caps, `seconds` the wall time of the call (encoding included).
    """

    applied: bool
    offsets: dict[Partition, int]
    users: int = 0
    items: int = 0
    events: int = 0
    covis_pairs: int = 0
    rebases: int = 0
    trimmed: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch encoded for the Lua script (`prepare_batch`), ready for `run_prepared`."""

    args: list[Any]
    partition_offsets: dict[Partition, tuple[int, int]]


def drop_applied(
    records: Iterable[T],
    applied: Mapping[Partition, int],
    coords: Callable[[T], tuple[str, int, int]],
) -> list[T]:
    """The records whose offset is past the applied offset of their partition.

    >>> recs = [("events", 0, 5), ("events", 0, 6), ("events", 1, 2)]
    >>> drop_applied(recs, {("events", 0): 5}, lambda r: r)
    [('events', 0, 6), ('events', 1, 2)]
    """
    out: list[T] = []
    for r in records:
        topic, partition, offset = coords(r)
        if offset > applied.get((topic, partition), -1):
            out.append(r)
    return out


def feast_connection_string(redis_url: str) -> str:
    """Feast's `connection_string` (``host:port,db=N,...``) for a `redis://` URL.

    >>> feast_connection_string("redis://127.0.0.1:6391/2")
    '127.0.0.1:6391,db=2'
    >>> feast_connection_string("redis://:s3cret@redis:6379")
    'redis:6379,password=s3cret'
    """
    u = urlparse(redis_url)
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"]
    db = (u.path or "/").lstrip("/")
    if db and db != "0":
        parts.append(f"db={int(db)}")
    if u.username:
        parts.append(f"username={unquote(u.username)}")
    if u.password:
        parts.append(f"password={unquote(u.password)}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


# --------------------------------------------------------------------------- protocol


class ProfileStore(Protocol):
    """The seam between the worker/recommender and the online store."""

    def load_users(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    def load_items(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    def load_seen(self, user_ids: Iterable[str]) -> dict[str, set[str]]: ...

    def read_offsets(self) -> dict[Partition, int]: ...

    def apply_batch(
        self,
        *,
        partition_offsets: Mapping[Partition, tuple[int, int]],
        user_rows: Mapping[str, Mapping[str, Mapping[str, Any]]],
        event_ts: Mapping[str, float],
        seen_adds: Mapping[str, Sequence[str]] | None = None,
        item_events: Sequence[tuple[str, str, float, float]] = (),
        covis: Sequence[tuple[str, str, float, float]] = (),
    ) -> ApplyResult: ...

    def forget_user(self, user_id: str, fence: tuple[Partition, int] | None = None) -> int: ...

    def write_items(
        self, items: Sequence[tuple[str, Any, Sequence[str], str | None]], *, ts: float | Sequence[float]
    ) -> None: ...

    def top_items(self, half_life_s: float, k: int, at: float | None = None) -> list[tuple[str, float]]: ...

    def covisitation(self, item_id: str, k: int, at: float | None = None) -> list[tuple[str, float]]: ...


# --------------------------------------------------------------------------- redis


def _load_lua(name: str) -> str:
    return resources.files("profiles").joinpath("lua", name).read_text(encoding="utf-8")


class RedisFeatureStore:
    """freshrec's online store on one Redis, in Feast's Redis format.

    `config` is the worker's `ProfileConfig`: it fixes the feature names (half-lives) and
    the item-stats parameters the Lua script applies (half-lives, type weights,
    conversion prior), so the Lua results equal `profiles.item_state.ItemState`.
    `client` must return bytes (`decode_responses=False`, the redis-py default).
    Constructing a store does not connect.

    >>> store = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", group="g")
    >>> store.offsets_key, store.seen_key("u1"), store.trending_key(3600)
    ('freshrec:offsets:g', 'freshrec:seen:u1', 'freshrec:trending:1h')
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        config: ProfileConfig | None = None,
        project: str = FEAST_PROJECT,
        group: str = "freshrec-worker",
        namespace: str = "freshrec",
        covis_half_life_s: float = DAY_S,
        covis_cap: int = 100,
        trending_cap: int = 1000,
        trending_half_lives_s: Sequence[float] | None = None,
        user_ttl_s: float = 30 * DAY_S,
    ) -> None:
        if covis_cap < 1 or trending_cap < 1:
            raise ValueError(f"caps must be >= 1, got covis_cap={covis_cap}, trending_cap={trending_cap}")
        self.client = client
        self.config = config or ProfileConfig()
        self.project = project
        self.group = group
        self.namespace = namespace
        self.covis_half_life_s = float(covis_half_life_s)
        self.covis_cap = int(covis_cap)
        self.trending_cap = int(trending_cap)
        #: a user's Feast hash and seen set expire after this long without a write (0: never).
        #: Retention, not a feature: Redis counts it in wall-clock time, like Feast's own
        #: `key_ttl_seconds`; every event of the user renews it.
        self.user_ttl_s = float(user_ttl_s)
        #: half-lives with a trending ZSET (default: the middle one, 1 d): each costs one
        #: ZINCRBY per item per batch in the script, so only those the recommender reads
        self.trending_half_lives_s: tuple[float, ...] = tuple(
            float(h) for h in (trending_half_lives_s or (self.config.category_half_life_s,))
        )
        self.views = build_views(self.config)
        self._codecs = {name: ViewCodec(name, v.features) for name, v in self.views.items()}
        self._user_view_of = {f: v for v in USER_VIEW_NAMES for f in self.views[v].feature_names}
        self._script = client.register_script(_load_lua("apply_batch.lua"))
        self._header = self._build_header()

    def load_scripts(self) -> None:
        """Load the batch script into Redis now (one round trip), so the first batch is one
        EVALSHA like every other instead of NOSCRIPT, SCRIPT LOAD and a retry; a Redis that
        cannot run it fails here, at start. (A Redis restarted later gets it back the same
        way, on its first NOSCRIPT.)"""
        sha = self.client.script_load(self._script.script)
        self._script.sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisFeatureStore:
        """A store on the Redis at `url` (``redis://host:port/db``)."""
        return cls(redis.Redis.from_url(url), **kwargs)

    # ------------------------------------------------------------------ keys
    def feast_key(self, entity: EntityName, entity_id: str) -> bytes:
        """The Feast hash key of a user or an item (entity key + project)."""
        return redis_key(self.project, JOIN_KEYS[entity], entity_id)

    def seen_key(self, user_id: str) -> str:
        """SET of the items a user interacted with."""
        return f"{self.namespace}:seen:{user_id}"

    def last_recs_key(self, user_id: str) -> str:
        """The last list published to a user."""
        return f"{self.namespace}:last_recs:{user_id}"

    def covis_key(self, item_id: str) -> str:
        """ZSET of an item's co-visitation neighbours."""
        return f"{self.namespace}:covis:{item_id}"

    def trending_key(self, half_life_s: float) -> str:
        """ZSET of forward-decayed item popularity at one half-life."""
        return f"{self.namespace}:trending:{n.half_life_suffix(half_life_s)}"

    @property
    def offsets_key(self) -> str:
        """HASH ``<topic>:<partition>`` -> last applied offset of this consumer group."""
        return f"{self.namespace}:offsets:{self.group}"

    @property
    def covis_landmark_key(self) -> str:
        return f"{self.namespace}:covis_landmark"

    @property
    def trending_landmark_key(self) -> str:
        return f"{self.namespace}:trending_landmark"

    # ------------------------------------------------------------------ reads
    def _load(
        self,
        entity: EntityName,
        view_names: Sequence[str],
        ids: Iterable[str],
        with_seen: bool = False,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
        """Rows of `ids` (and, with `with_seen`, their seen sets) in ONE pipelined round trip."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}, {}
        codecs = [self._codecs[v] for v in view_names]
        fields: list[bytes] = [f for c in codecs for f in c.fields]
        float32 = [f for v in view_names for f, k in self.views[v].features if k == "float_list"]
        with self.client.pipeline(transaction=False) as pipe:
            for entity_id in unique:
                pipe.hmget(self.feast_key(entity, entity_id), fields)  # type: ignore[arg-type]
            if with_seen:
                for entity_id in unique:
                    pipe.smembers(self.seen_key(entity_id))
            replies = pipe.execute()
        out: dict[str, dict[str, Any]] = {}
        for entity_id, values in zip(unique, replies, strict=False):
            row: dict[str, Any] = {}
            start = 0
            for c in codecs:
                stop = start + len(c.fields)
                row.update(c.decode_row(values[start:stop]))
                start = stop
            if row:
                for feature in float32:
                    if feature in row:
                        row[feature] = np.asarray(row[feature], dtype=np.float32)
                out[entity_id] = row
        seen: dict[str, set[str]] = {}
        if with_seen:
            for entity_id, members in zip(unique, replies[len(unique) :], strict=True):
                seen[entity_id] = {m.decode("utf-8") for m in members}
        return out, seen

    def load_users(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Every user_activity and user_session feature of the users, in one round trip.

        Values: float, int, str, list[str], list[float] (Float64 lists) and
        `np.ndarray[float32]` (session_embedding); `"_ts:<view>"` holds the view's event
        time (epoch s). Users with nothing stored are absent from the result.
        """
        return self._load("user", USER_VIEW_NAMES, user_ids)[0]

    def load_users_and_seen(
        self, user_ids: Iterable[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
        """`load_users` and `load_seen` of the same users in ONE round trip."""
        return self._load("user", USER_VIEW_NAMES, user_ids, with_seen=True)

    def load_items(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Every item_stats and item_vectors feature of the items, in one round trip.

        Like `load_users` (`vector` is a float32 array); counters are as of `updated_at`.
        """
        return self._load("item", ITEM_VIEW_NAMES, item_ids)[0]

    def load_seen(self, user_ids: Iterable[str]) -> dict[str, set[str]]:
        """The seen-item sets of the users, in one round trip (empty set when none)."""
        unique = list(dict.fromkeys(user_ids))
        with self.client.pipeline(transaction=False) as pipe:
            for uid in unique:
                pipe.smembers(self.seen_key(uid))
            replies = pipe.execute()
        return {
            uid: {m.decode("utf-8") for m in members} for uid, members in zip(unique, replies, strict=True)
        }

    def items_present(self, item_ids: Sequence[str]) -> set[str]:
        """The items whose catalog row (item_vectors) Redis holds, in one round trip."""
        field = self._codecs["item_vectors"].ts_field
        with self.client.pipeline(transaction=False) as pipe:
            for iid in item_ids:
                pipe.hexists(self.feast_key("item", iid), field)  # type: ignore[arg-type]
            replies = pipe.execute()
        return {iid for iid, present in zip(item_ids, replies, strict=True) if present}

    def read_offsets(self) -> dict[Partition, int]:
        """The last applied offset of every partition this group has written."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.offsets_key))
        return {_parse_partition(k): int(v) for k, v in raw.items()}

    def _top(
        self, key: str, landmark_key: str, landmark_field: str, half_life_s: float, k: int, at: float | None
    ) -> list[tuple[str, float]]:
        """Top `k` members of a forward-decayed ZSET, values read at `at` (default: landmark)."""
        if k <= 0:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(key, 0, k - 1, withscores=True)
            pipe.hget(landmark_key, landmark_field)
            members, raw_landmark = pipe.execute()
        if not members or raw_landmark is None:
            return []
        landmark = float(raw_landmark)
        f = 2.0 ** ((landmark - (landmark if at is None else at)) / half_life_s)
        out = []
        for member, score in members:
            v = float(score) * f
            out.append((member.decode("utf-8"), v if v >= TINY else 0.0))
        out.sort(key=lambda kv: (-kv[1], kv[0]))
        return out

    def top_items(self, half_life_s: float, k: int, at: float | None = None) -> list[tuple[str, float]]:
        """The `k` most popular items at one half-life (type-weighted decayed interactions),
        best first, with their popularity at event time `at` (default: the landmark)."""
        if float(half_life_s) not in self.trending_half_lives_s:
            raise ValueError(
                f"no trending set at half-life {half_life_s!r}: the store keeps {self.trending_half_lives_s}"
            )
        suffix = n.half_life_suffix(half_life_s)
        return self._top(
            self.trending_key(half_life_s), self.trending_landmark_key, suffix, half_life_s, k, at
        )

    def covisitation(self, item_id: str, k: int, at: float | None = None) -> list[tuple[str, float]]:
        """Up to `k` co-visitation neighbours of `item_id`, best first, weights read at `at`."""
        h = self.covis_half_life_s
        return self._top(self.covis_key(item_id), self.covis_landmark_key, item_id, h, k, at)

    def candidate_inputs(
        self, item_ids: Iterable[str], covis_k: int, trending_k: int, at: float
    ) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, float]]]:
        """Co-visitation neighbours of `item_ids` and the trending list, in ONE round trip.

        Scores are read at event time `at` (neighbours best first; trending at the first
        trending half-life).
        """
        unique = list(dict.fromkeys(item_ids))
        h = self.covis_half_life_s
        trend_h = self.trending_half_lives_s[0]
        with self.client.pipeline(transaction=False) as pipe:
            for iid in unique:  # flat [member, score, ...] replies: paired below, in one pass
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "ZREVRANGE", self.covis_key(iid), 0, covis_k - 1, "WITHSCORES"
                )
            if unique:
                pipe.hmget(self.covis_landmark_key, unique)
            pipe.zrevrange(self.trending_key(trend_h), 0, trending_k - 1, withscores=True)
            pipe.hget(self.trending_landmark_key, n.half_life_suffix(trend_h))
            replies = pipe.execute()
        covis: dict[str, list[tuple[str, float]]] = {}
        if unique:
            landmarks = replies[len(unique)]
            for iid, members, lm in zip(unique, replies[: len(unique)], landmarks, strict=True):
                if members and lm is not None:
                    f = 2.0 ** ((float(lm) - max(at, float(lm))) / h)  # never read before the landmark
                    # one decode per list (split on NUL; per member if an id holds one)
                    names = b"\x00".join(members[::2]).decode("utf-8").split("\x00")
                    if 2 * len(names) != len(members):
                        names = [m.decode("utf-8") for m in members[::2]]
                    scores = map(float, members[1::2])
                    covis[iid] = (
                        list(zip(names, scores, strict=True))
                        if f == 1.0
                        else [(m, s * f) for m, s in zip(names, scores, strict=True)]
                    )
        members, lm = replies[-2], replies[-1]
        trending: list[tuple[str, float]] = []
        if members and lm is not None:
            f = 2.0 ** ((float(lm) - max(at, float(lm))) / trend_h)
            trending = [(m.decode("utf-8"), float(s) * f) for m, s in members]
        return covis, trending

    # ------------------------------------------------------------------ writes
    def _build_header(self) -> list[Any]:
        """The configuration part of the Lua script's ARGV (read in apply_batch.lua's order)."""
        cfg = self.config
        hls = list(cfg.half_lives_s)
        nh = len(hls)
        longest = hls.index(max(hls)) + 1
        type_no: dict[str, int] = {t: k for k, t in enumerate(EVENT_TYPES)}

        def counter(t: str) -> int:  # 1-based index of t's longest-half-life counter
            return type_no[t] * nh + longest

        stat_names = (
            [n.count_name(t, h) for t in EVENT_TYPES for h in hls]
            + [n.total_name(t) for t in EVENT_TYPES]
            + [n.popularity_name(h) for h in hls]
            + [n.CONVERSION_RATE, n.UPDATED_AT]
        )
        return [
            len(EVENT_TYPES),
            nh,
            *hls,
            *(float(cfg.type_weights[t]) for t in EVENT_TYPES),
            len(self.trending_half_lives_s),
            *self.trending_half_lives_s,
            *(self.trending_key(h) for h in self.trending_half_lives_s),
            *(n.half_life_suffix(h) for h in self.trending_half_lives_s),
            self.trending_landmark_key,
            self.trending_cap,
            f"{self.namespace}:covis:",
            self.covis_landmark_key,
            self.covis_half_life_s,
            self.covis_cap,
            REBASE_HALF_LIVES,
            TINY,
            cfg.conversion_prior_weight,
            cfg.conversion_prior,
            round(self.user_ttl_s * 1000),
            counter("purchase"),
            counter("view"),
            counter("click"),
            *(field_name("item_stats", f) for f in stat_names),
            timestamp_field("item_stats"),
        ]

    def split_user_features(self, features: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """`UserState.to_features()` grouped by user view (user_activity, user_session).

        Raises `SchemaError` for a feature that no user view declares.
        """
        out: dict[str, dict[str, Any]] = {}
        view_of = self._user_view_of
        for name, value in features.items():
            view = view_of.get(name)
            if view is None:
                raise SchemaError("user_*", name, "no user feature view declares it")
            out.setdefault(view, {})[name] = value
        return out

    def encode_user(self, user_id: str, views: Mapping[str, Mapping[str, Any]], ts: float) -> list[bytes]:
        """Flat HSET `[field, value, ...]` of one user's rows, `_ts:<view>` = `ts`."""
        out: list[bytes] = []
        ts_bytes = encode_timestamp(ts)
        for view, row in views.items():
            codec = self._codecs.get(view)
            if codec is None or view not in USER_VIEW_NAMES:
                raise SchemaError(view, "*", f"user {user_id!r}: not a user feature view")
            try:
                out += codec.encode_row(row, None)
                out += (codec.ts_field, ts_bytes)
            except KeyError as e:
                raise SchemaError(view, str(e.args[0]), f"user {user_id!r}: no such feature") from None
            except (TypeError, ValueError, OverflowError, AttributeError) as e:
                bad = _find_bad(codec, row)
                raise SchemaError(view, bad, f"user {user_id!r}: {e}") from None
        return out

    def apply_batch(
        self,
        *,
        partition_offsets: Mapping[Partition, tuple[int, int]],
        user_rows: Mapping[str, Mapping[str, Mapping[str, Any]]],
        event_ts: Mapping[str, float],
        seen_adds: Mapping[str, Sequence[str]] | None = None,
        item_events: Sequence[tuple[str, str, float, float]] = (),
        covis: Sequence[tuple[str, str, float, float]] = (),
    ) -> ApplyResult:
        """Apply one micro-batch atomically in ONE round trip (EVALSHA), behind the fence.

        - `partition_offsets`: (topic, partition) -> (first, last) offset in the batch.
          If the stored offset of any of them is >= its `first`, nothing is written and
          the result has `applied=False` (see `ApplyResult`).
        - `user_rows`: user -> view -> feature -> value (`split_user_features` of
          `UserState.to_features()`), written as given; features not given keep their
          stored value. `event_ts[user]` (event time of the user's last event) is
          written as `_ts:<view>`.
        - `seen_adds`: user -> item ids to add to `{ns}:seen:<user>`.
        - `item_events`: (item_id, type, ts, weight) in arrival order; weight 1.0 is what
          `ItemState` counts. The Lua script updates item_stats exactly like
          `ItemState.apply` (+ weight instead of + 1), and the trending sets.
        - `covis`: `(a, b, ts, weight)` increments as `covisit_pairs` returns them
          (both directions already), applied like `CovisitationIndex.add`.
        """
        return self.run_prepared(
            self.prepare_batch(
                partition_offsets=partition_offsets,
                user_rows=user_rows,
                event_ts=event_ts,
                seen_adds=seen_adds,
                item_events=item_events,
                covis=covis,
            )
        )

    def prepare_batch(
        self,
        *,
        partition_offsets: Mapping[Partition, tuple[int, int]],
        user_rows: Mapping[str, Mapping[str, Mapping[str, Any]]],
        event_ts: Mapping[str, float],
        seen_adds: Mapping[str, Sequence[str]] | None = None,
        item_events: Sequence[tuple[str, str, float, float]] = (),
        covis: Sequence[tuple[str, str, float, float]] = (),
    ) -> PreparedBatch:
        """Encode one micro-batch into the Lua script's arguments (`run_prepared` sends it).

        `apply_batch` = `run_prepared(prepare_batch(...))`; the arguments and their rules are
        documented there.
        """
        args: list[Any] = [self.offsets_key, len(partition_offsets)]
        for (topic, partition), (first, last) in partition_offsets.items():
            if first > last:
                raise ValueError(f"{topic}[{partition}]: first offset {first} > last {last}")
            args += (f"{topic}:{partition}", int(first), int(last))
        args += self._header

        args.append(len(user_rows))
        for uid, views in user_rows.items():
            try:
                ts = event_ts[uid]
            except KeyError:
                raise SchemaError("*", "_ts", f"user {uid!r}: no event_ts given") from None
            flat = self.encode_user(uid, views, ts)
            args += (self.feast_key("user", uid), len(flat))
            args += flat

        seen_chunks: list[tuple[str, Sequence[str]]] = []
        for uid, item_ids in (seen_adds or {}).items():
            for k in range(0, len(item_ids), 1000):
                seen_chunks.append((uid, item_ids[k : k + 1000]))
        args.append(len(seen_chunks))
        for uid, chunk in seen_chunks:
            args += (self.seen_key(uid), len(chunk))
            args += chunk

        type_index: dict[str, int] = {t: k + 1 for k, t in enumerate(EVENT_TYPES)}
        by_item: dict[str, list[Any]] = {}
        for item_id, etype, ts, weight in item_events:
            type_no = type_index.get(etype)
            if type_no is None:
                raise SchemaError("item_stats", "type", f"item {item_id!r}: unknown type {etype!r}")
            if not 0.0 <= ts < 1e15:
                raise SchemaError("item_stats", "ts", f"item {item_id!r}: bad event time {ts!r}")
            by_item.setdefault(item_id, []).extend((type_no, float(ts), float(weight)))
        args.append(len(by_item))
        for item_id, flat_events in by_item.items():
            args += (self.feast_key("item", item_id), item_id, len(flat_events) // 3)
            args += flat_events

        args += self._covis_args(covis)
        return PreparedBatch(args, dict(partition_offsets))

    def run_prepared(self, prepared: PreparedBatch) -> ApplyResult:
        """Send a prepared batch: ONE EVALSHA, atomic, behind the offset fence."""
        started = time.perf_counter()
        reply = self._script(args=prepared.args)
        if reply[0] == 0:
            stored = {_parse_partition(reply[k]): int(reply[k + 1]) for k in range(1, len(reply), 2)}
            return ApplyResult(False, stored, seconds=time.perf_counter() - started)
        _, users, items, events, pairs, rebases, trimmed = reply
        return ApplyResult(
            True,
            {p: int(last) for p, (_, last) in prepared.partition_offsets.items()},
            users=users,
            items=items,
            events=events,
            covis_pairs=pairs,
            rebases=rebases,
            trimmed=trimmed,
            seconds=time.perf_counter() - started,
        )

    def _covis_args(self, covis: Sequence[tuple[str, str, float, float]]) -> list[Any]:
        """Increments summed per (a, b) relative to R_a, the latest time of a's increments.

        `S_ab = Σ w · 2^((t − R_a)/h)` (never above Σ w); the script adds
        `S_ab · 2^((R_a − L_a)/h)`, rebasing `L_a` to `R_a` first when that exponent
        exceeds `rebase_half_lives`. The same sums as `CovisitationIndex.add` one by one,
        with one ZINCRBY per distinct pair and no per-increment work in Lua.
        """
        latest: dict[str, float] = {}
        for a, _, ts, _ in covis:
            if not ts <= latest.get(a, -math.inf):
                latest[a] = ts
        h = self.covis_half_life_s
        sums: dict[str, dict[str, float]] = {a: {} for a in latest}
        for a, b, ts, weight in covis:
            d = weight * 2.0 ** ((ts - latest[a]) / h)
            row = sums[a]
            row[b] = row.get(b, 0.0) + (d if d >= TINY else 0.0)
        args: list[Any] = [len(sums)]
        for a, row in sums.items():
            args += (a, latest[a], len(row))
            for b, total in row.items():
                args += (b, total)
        return args

    def write_items(
        self, items: Sequence[tuple[str, Any, Sequence[str], str | None]], *, ts: float | Sequence[float]
    ) -> None:
        """Write catalog rows (item_id, vector, categories, title) to item_vectors.

        `vector` is a sequence or numpy array of floats (stored as float32); `ts` is the
        event time of the catalog records (the `_ts:item_vectors`): one for all, or one per
        row. One round trip.
        """
        times = [float(ts)] * len(items) if isinstance(ts, int | float) else list(ts)
        if len(times) != len(items):
            raise ValueError(f"{len(items)} items but {len(times)} event times")
        codec = self._codecs["item_vectors"]
        with self.client.pipeline(transaction=False) as pipe:
            for (item_id, vector, categories, title), row_ts in zip(items, times, strict=True):
                row = {"vector": vector, "categories": list(categories), "title": title}
                try:
                    flat = codec.encode_row(row, row_ts)
                except (TypeError, ValueError, OverflowError, AttributeError) as e:
                    raise SchemaError(
                        "item_vectors", _find_bad(codec, row), f"item {item_id!r}: {e}"
                    ) from None
                pipe.hset(self.feast_key("item", item_id), items=flat)  # type: ignore[arg-type]
            pipe.execute()

    def forget_user(self, user_id: str, fence: tuple[Partition, int] | None = None) -> int:
        """Delete every key of `user_id` (Feast hash, seen set, last list); not offsets.

        With `fence=((topic, partition), offset)`, the partition's applied offset is set to
        the forget request's offset in the same transaction, so a replay neither loses nor
        repeats it. Returns the number of keys deleted.
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.feast_key("user", user_id), self.seen_key(user_id), self.last_recs_key(user_id))
            if fence is not None:
                (topic, partition), offset = fence
                pipe.hset(self.offsets_key, f"{topic}:{partition}", str(int(offset)))
            deleted = pipe.execute()[0]
        return cast(int, deleted)

    # ------------------------------------------------------------------ backfill
    # `freshrec backfill` (streams/backfill.py) writes the state that is not a Feast view
    # with these; the Feast views go through parquet + `feast materialize`. Each replaces
    # the keys it names (DEL, then the new content) in transactions of `chunk` keys, in
    # exactly the representation apply_batch.lua continues from.

    def has_stream_state(self) -> bool:
        """Whether this namespace already holds trending, co-visitation or offsets state."""
        keys = [self.offsets_key, self.covis_landmark_key, self.trending_landmark_key]
        return bool(self.client.exists(*keys))

    def replace_seen(self, seen: Mapping[str, Iterable[str]], *, chunk: int = 500) -> int:
        """Set each user's seen-item SET to exactly the given items; the number written."""
        written = 0
        users = list(seen.items())
        for start in range(0, len(users), chunk):
            with self.client.pipeline(transaction=True) as pipe:
                for uid, item_ids in users[start : start + chunk]:
                    key = self.seen_key(uid)
                    pipe.delete(key)
                    members = list(item_ids)
                    for k in range(0, len(members), 1000):
                        pipe.sadd(key, *members[k : k + 1000])
                    written += 1
                pipe.execute()
        return written

    def replace_covisitation(
        self, sets: Mapping[str, tuple[float, Mapping[str, float]]], *, chunk: int = 500
    ) -> int:
        """Set items' co-visitation ZSETs: `item -> (landmark, {neighbour: Σ w·2^((t − L)/h)})`
        (h = `covis_half_life_s`), landmark into the `covis_landmark` hash. The number written.
        """
        written = 0
        rows = [(a, lm, scores) for a, (lm, scores) in sets.items() if scores]
        for start in range(0, len(rows), chunk):
            with self.client.pipeline(transaction=True) as pipe:
                landmarks: dict[str, float] = {}
                for a, lm, scores in rows[start : start + chunk]:
                    key = self.covis_key(a)
                    pipe.delete(key)
                    pipe.zadd(key, {b: float(s) for b, s in scores.items()})
                    landmarks[a] = float(lm)
                    written += 1
                pipe.hset(self.covis_landmark_key, mapping=landmarks)
                pipe.execute()
        return written

    def replace_trending(self, sets: Mapping[float, tuple[float, Mapping[str, float]]]) -> int:
        """Set the trending ZSETs: `half_life_s -> (landmark, {item: Σ TW·2^((t − L)/h)})`,
        landmarks into the `trending_landmark` hash (one transaction). The number written.
        """
        with self.client.pipeline(transaction=True) as pipe:
            for h, (lm, scores) in sets.items():
                key = self.trending_key(h)
                pipe.delete(key)
                members = [(m, float(s)) for m, s in scores.items()]
                for k in range(0, len(members), 1000):
                    pipe.zadd(key, dict(members[k : k + 1000]))
                pipe.hset(self.trending_landmark_key, n.half_life_suffix(h), repr(float(lm)))
            pipe.execute()
        return len(sets)


def _satisfies_protocol(store: RedisFeatureStore) -> ProfileStore:
    return store  # mypy checks that RedisFeatureStore implements ProfileStore


def _parse_partition(raw: bytes) -> Partition:
    topic, _, partition = raw.decode("utf-8").rpartition(":")
    return topic, int(partition)


def _find_bad(codec: ViewCodec, row: Mapping[str, Any]) -> str:
    """The first feature of `row` whose value does not encode (for error messages)."""
    for name, value in row.items():
        try:
            codec.encode_row({name: value}, None)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError):
            return name
    return "*"


__all__ = [
    "FEAST_PROJECT",
    "FLOAT32_FEATURES",
    "SESSION_EMBEDDING_DIM",
    "VIEWS",
    "ApplyResult",
    "ProfileStore",
    "RedisFeatureStore",
    "ViewSpec",
    "build_views",
    "drop_applied",
    "feast_connection_string",
]
