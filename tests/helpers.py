"""Small helpers the pipeline tests share (real Kafka only)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
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


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `freshrec worker` subprocess running with `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    return env | settings.to_env() | {"FRESHREC_LOG_LEVEL": "WARNING"} | extra


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
            problems.append(
                f"user {uid}: seen set differs: extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}"
            )
    item_names = set(next(iter(want_items.values()))) if want_items else set()
    for iid, want in want_items.items():
        got = {k: v for k, v in got_items.get(iid, {}).items() if k in item_names}
        problems += [f"item {iid}: {p}" for p in compare_features(got, want)]
    return problems


EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rate")


def valid_event(n: int, rng: random.Random) -> dict[str, object]:
    """A valid contract event with event_id `ok-n` (ISO and epoch-millis timestamps alternate)."""
    event: dict[str, object] = {
        "event_id": f"ok-{n}",
        "type": rng.choice(EVENT_TYPES),
        "user_id": f"u{rng.randrange(300)}",
        "item_id": f"i{rng.randrange(1000)}",
        "ts": 1_700_000_000_000 + n * 1000 if n % 2 == 0 else "2023-11-14T22:13:20.5+01:00",
    }
    if event["type"] == "rate":
        event["value"] = rng.choice([0.5, 3.0, 4.5])
    return event


def malformed_event(n: int, rng: random.Random) -> bytes:
    """One malformed message of a kind chosen by n (8 kinds); each carries its marker `bad-n`."""
    good = valid_event(n, rng) | {"event_id": f"bad-{n}"}
    kind = n % 8
    if kind == 0:
        return f'{{"event_id": "bad-{n}", "type": "view", '.encode()  # truncated JSON
    if kind == 1:
        good.pop("user_id")
    elif kind == 2:
        good["item_id"] = 12345  # mistyped
    elif kind == 3:
        good["ts"] = "2024-03-01T10:00:00"  # naive
    elif kind == 4:
        good["ts"] = 32_503_680_000_000  # year 3000
    elif kind == 5:
        good["type"] = "like"  # unknown type
    elif kind == 6:
        good["ts"] = 1_700_000_000  # epoch seconds, not millis
    else:
        good["value"] = "five"
    return json.dumps(good).encode()


def mixed_stream(
    total: int, bad_every: int, seed: int
) -> tuple[list[tuple[bytes | None, bytes]], set[bytes], set[str]]:
    """(messages, malformed values, valid event ids): every `bad_every`-th message is malformed."""
    from streams.ingest import encode_rows

    rng = random.Random(seed)
    messages: list[tuple[bytes | None, bytes]] = []
    bad: set[bytes] = set()
    valid: set[str] = set()
    for n in range(total):
        if n % bad_every == 0:
            raw = malformed_event(n, rng)
            messages.append((f"u{n % 300}".encode(), raw))
            bad.add(raw)
        else:
            event = valid_event(n, rng)
            messages.extend(encode_rows([event], "user_id"))
            valid.add(str(event["event_id"]))
    return messages, bad, valid


FEATURE_REPO = Path(__file__).resolve().parents[1] / "feature_repo"


def repo_copy(tmp_path: Path, project: str) -> Path:
    """A copy of feature_repo/ whose feature_store.yaml names `project`."""
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for path in FEATURE_REPO.iterdir():
        if path.is_file() and path.suffix in {".py", ".yaml", ".md"}:
            shutil.copy(path, repo / path.name)
    yaml = (repo / "feature_store.yaml").read_text()
    assert "project: freshrec\n" in yaml
    (repo / "feature_store.yaml").write_text(yaml.replace("project: freshrec\n", f"project: {project}\n"))
    return repo
