"""Small helpers the pipeline tests share (real Kafka only)."""

from __future__ import annotations

import os
import time

import numpy as np
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Message

from streams.config import Settings


def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 60.0) -> list[Message]:
    """Every message of `topic` from the beginning, waiting until `expect` arrived (or timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(msg)
        # a short grace period to catch anything beyond `expect`
        out.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return out


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (CI and developers), or `FRESHREC_SHARED_DATA`."""
    override = os.environ.get("FRESHREC_SHARED_DATA")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[1]
    for base in (repo.parent, *repo.parents, Path("/work")):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("../shared/data not found beside the checkout; set FRESHREC_SHARED_DATA")


def compare_store_with_reference(store, events, items, config, *, vector_tol: float = 2e-6) -> list[str]:  # type: ignore[no-untyped-def]
    """Every user's and item's stored features against the naive recomputation.

    Session embeddings are stored as float32 (Feast Array(Float32)), so vectors are compared
    with an absolute tolerance of a few float32 ulps; everything else at relative 1e-9.
    """
    from profiles.reference import compare_features, reference_item_features, reference_user_features

    catalog = {i.item_id: i for i in items}
    want_users = reference_user_features(events, config, catalog)
    want_items = reference_item_features(events, config)
    got_users = store.load_users(want_users)
    seen = store.load_seen(want_users)
    got_items = store.load_items(want_items)
    problems: list[str] = []
    for uid, want in want_users.items():
        got = {k: v for k, v in got_users.get(uid, {}).items() if not k.startswith("_ts:")}
        if isinstance(got.get("session_embedding"), np.ndarray):
            got["session_embedding"] = [float(x) for x in got["session_embedding"]]
        problems += [f"user {uid}: {p}" for p in compare_features(got, want, vector_abs_tol=vector_tol)]
        seen_want = {e.item_id for e in events if e.user_id == uid}
        if seen.get(uid) != seen_want:
            extra, missing = seen.get(uid, set()) - seen_want, seen_want - seen.get(uid, set())
            problems.append(f"user {uid}: seen set differs: extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}")
    item_names = set(next(iter(want_items.values()))) if want_items else set()
    for iid, want in want_items.items():
        got = {k: v for k, v in got_items.get(iid, {}).items() if k in item_names}
        problems += [f"item {iid}: {p}" for p in compare_features(got, want)]
    return problems
