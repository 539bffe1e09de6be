"""freshrec's Feast objects: entities, feature views and push sources.

Built from `profiles.store.VIEWS`: the feature names and kinds of `profiles.naming` (the
single source of truth) grouped into views, which the worker writes in Feast's Redis
format without importing Feast. Each view has a PushSource whose batch source is a
parquet file under `data/` (gitignored, written by `freshrec backfill`), so
`feast materialize` and `FeatureStore.push(...)` both work. See README.md.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

from profiles.store import VIEWS, ViewSpec

FEAST_TYPES = {
    "double": Float64,
    "float": Float32,
    "int64": Int64,
    "string": String,
    "double_list": Array(Float64),
    "float_list": Array(Float32),
    "string_list": Array(String),
}

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A user of the shop (events key).",
)
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalog item.",
)
ENTITIES = {"user": user, "item": item}


def _push_source(spec: ViewSpec) -> PushSource:
    return PushSource(
        name=f"{spec.name}_push",
        batch_source=FileSource(
            name=f"{spec.name}_parquet",
            path=f"data/{spec.name}.parquet",
            timestamp_field="event_timestamp",
        ),
    )


def _feature_view(spec: ViewSpec) -> FeatureView:
    return FeatureView(
        name=spec.name,
        entities=[ENTITIES[spec.entity]],
        ttl=timedelta(seconds=spec.ttl_s),
        schema=[Field(name=f, dtype=FEAST_TYPES[k]) for f, k in spec.features],
        source=_push_source(spec),
        online=True,
        description=spec.description,
    )


user_activity = _feature_view(VIEWS["user_activity"])
user_session = _feature_view(VIEWS["user_session"])
item_stats = _feature_view(VIEWS["item_stats"])
item_vectors = _feature_view(VIEWS["item_vectors"])
