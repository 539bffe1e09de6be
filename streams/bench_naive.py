"""The naive pipeline of `freshrec bench`: what a quick implementation does, event by event.

`python -m streams.bench_naive --repo DIR` (settings from `FRESHREC_*`; DIR a copy of
feature_repo/ made by `prepare_feast_repo`) applies the Feast repo, reads the catalog, then
polls the events topic one message at a time and, for every event:

1. updates the user's profile in memory with the project's own math (`UserState.apply`:
   decayed counts, categories, session) and **pushes** the `user_activity` row to Redis
   through the Feast SDK (`FeatureStore.push(..., to=PushMode.ONLINE)`, one row);
2. `learn_one` on a River `FunkMF` (the event's type weight as the target);
3. rescores its candidates for the user in a plain loop: the 200 most popular items so far
   (recounted every 100 events), minus what the user has seen, by `predict_one`;
4. produces the top-K list (the worker's message, schema v1) and commits the event's offset
   (asynchronously; `poll(0)` per event, no flush per event: kinder to it than a flush).

It runs until SIGTERM/SIGINT. No batching anywhere: that is the point of the comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.errors import FreshrecError

#: The Feast push source (of the `user_activity` view) the naive pipeline writes through.
PUSH_SOURCE = "user_activity_push"
CANDIDATES = 200
_REPO = Path(__file__).resolve().parents[1]


def prepare_feast_repo(settings: Settings, dest: Path) -> Path:
    """feature_repo/ copied to `dest` as project `settings.feast_project` (its online store is
    `${REDIS_CONNECTION_STRING}`, set by `run_naive`); the naive worker applies it (`apply_repo`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (_REPO / "feature_repo").glob("*"):
        if path.suffix in (".py", ".yaml"):
            shutil.copy(path, dest / path.name)
    config = dest / "feature_store.yaml"
    text = config.read_text()
    if "project: freshrec\n" not in text:  # never write into the main project's keys
        raise FreshrecError(f"{config}: no `project: freshrec` line to replace")
    config.write_text(text.replace("project: freshrec\n", f"project: {settings.feast_project}\n"))
    (dest / "data").mkdir(exist_ok=True)
    return dest


def apply_repo(repo: Path) -> Any:
    """`feast apply` in this process (the SDK's `FeatureStore.apply` with the repo's entities
    and feature views); returns the `FeatureStore`."""
    import importlib.util

    from feast import FeatureStore

    spec = importlib.util.spec_from_file_location("bench_feast_definitions", repo / "definitions.py")
    if spec is None or spec.loader is None:
        raise FreshrecError(f"no definitions.py in {repo}")
    definitions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(definitions)
    store = FeatureStore(repo_path=str(repo))
    views = [
        definitions.user_activity,
        definitions.user_session,
        definitions.item_stats,
        definitions.item_vectors,
    ]
    store.apply([*definitions.ENTITIES.values(), *views])
    return store


def run_naive(settings: Settings, repo: Path, stop: threading.Event) -> int:
    """The per-event loop until `stop`; returns how many events it handled."""
    from datetime import UTC, datetime

    import pandas as pd
    from confluent_kafka import Message
    from feast.data_source import PushMode
    from river import reco

    from profiles.events import Event
    from profiles.store import VIEWS, feast_connection_string
    from profiles.updater import ItemCatalog
    from profiles.user_state import UserState
    from streams.catalog import CatalogReader
    from streams.contract import decode_event
    from streams.errors import Coordinates, DecodeError
    from streams.handlers import profile_config
    from streams.kafka_io import make_consumer, make_producer
    from streams.publish import RecList

    # feature_store.yaml reads its Redis from ${REDIS_CONNECTION_STRING}
    os.environ["REDIS_CONNECTION_STRING"] = feast_connection_string(settings.redis_url)
    store = apply_repo(repo)
    config = profile_config(settings)
    features = VIEWS["user_activity"].feature_names
    catalog = ItemCatalog(config.embedding_dim)
    reader = CatalogReader(settings, lambda msg, exc: None)
    for item in reader.bootstrap():
        catalog.from_item(item)
    reader.close()

    consumer = make_consumer(settings)
    producer = make_producer(settings, **{"linger.ms": 1})
    consumer.subscribe([settings.topic_events])
    model = reco.FunkMF(n_factors=10, seed=1)
    users: dict[str, UserState] = {}
    popularity: Counter[str] = Counter()
    candidates: list[str] = []
    handled = 0

    def skip(msg: Message) -> None:
        consumer.commit(message=msg, asynchronous=True)

    try:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            try:
                event = decode_event(msg.value(), Coordinates(msg.topic(), msg.partition(), msg.offset()))
            except DecodeError:
                skip(msg)
                continue
            if not isinstance(event, Event):
                skip(msg)
                continue
            # 1. profile, pushed through Feast
            meta = catalog.get(event.item_id) or catalog.unknown(event.item_id)
            state = users.get(event.user_id)
            if state is None:
                state = users[event.user_id] = UserState(event.user_id, config)
            state.apply(event, meta.categories, meta.vector)
            values = state.to_features()
            row = {"user_id": event.user_id, "event_timestamp": datetime.fromtimestamp(event.ts, UTC)}
            row.update((name, values[name]) for name in features)
            store.push(PUSH_SOURCE, pd.DataFrame([row]), to=PushMode.ONLINE)
            # 2. the online model
            model.learn_one(event.user_id, event.item_id, event.weight)
            # 3. rescoring
            popularity[event.item_id] += 1
            if handled % 100 == 0:
                candidates = [item for item, _ in popularity.most_common(CANDIDATES)]
            scored = sorted(
                (
                    (model.predict_one(event.user_id, item), item)
                    for item in candidates
                    if item not in state.seen_items
                ),
                reverse=True,
            )[: settings.top_k]
            # 4. publish, commit
            rec = RecList(
                event.user_id,
                [
                    {"item_id": item, "score": float(score), "source": "mf", "propensity": 1.0}
                    for score, item in scored
                ],
                event.event_id,
                event.ts,
                f"naive:learned={handled + 1}",
            )
            producer.produce(settings.topic_recommendations, value=rec.to_message(), key=msg.key())
            producer.poll(0)
            consumer.commit(message=msg, asynchronous=True)
            handled += 1
    finally:
        producer.flush(30.0)
        consumer.close()
    return handled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench_naive", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="a Feast repo applied by prepare_feast_repo")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handled = run_naive(Settings.from_env(), Path(args.repo), stop)
    print(f"naive stopped: {handled} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
