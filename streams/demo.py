"""`freshrec demo`: the whole pipeline on a fresh machine, with what it did shown at the end.

Stack up → topics → a seeded simulated world (catalog + events) → the worker running in
this process while the events are replayed → a summary read back from Redis (a user's
profile, trending items, co-visitation neighbours) → the worker keeps running until
Ctrl-C (or stops once caught up with --exit-when-done).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

from streams.config import Settings
from streams.handlers import ProfileHandler
from streams.ingest import lines_of, produce
from streams.kafka_io import create_topics, end_offsets_total, group_lag
from streams.simulate import SimulationConfig, simulate_to_files
from streams.stack import LocalStack
from streams.worker import Worker


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    logging.getLogger("freshrec").setLevel(logging.WARNING)
    say = _Say()

    say.step("local stack: Apache Kafka (KRaft) + Redis on loopback")
    stack = LocalStack(settings)
    for line in stack.up():
        say.detail(line)
    for status in stack.status():
        say.detail(status.line())

    say.step("topics")
    for name, state in create_topics(settings).items():
        say.detail(f"{name:<20} {state}")

    say.step(
        f"simulated world: {args.users:,} users, {args.items:,} items, "
        f"{args.events:,} events, seed {args.seed}"
    )
    folder = Path(settings.stack_dir) / "demo" / f"u{args.users}-i{args.items}-e{args.events}-s{args.seed}"
    events_path, items_path = folder / "events.jsonl", folder / "items.jsonl"
    if not events_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        cfg = SimulationConfig(seed=args.seed, users=args.users, items=args.items, events=args.events)
        simulate_to_files(cfg, events_path, items_path, progress=True)
    say.detail(f"{events_path} and {items_path}")

    already = end_offsets_total(settings, settings.topic_events)
    if end_offsets_total(settings, settings.topic_items) == 0:
        report = produce(settings, settings.topic_items, lines_of(str(items_path), "item_id"))
        say.detail(f"catalog: {report.sent:,} items sent to {settings.topic_items}")

    handler = ProfileHandler(settings)
    worker = Worker(settings, handler)
    thread = threading.Thread(target=worker.run, name="freshrec-worker", daemon=True)
    say.step(f"worker running (group {settings.group_id}); replaying the events into {settings.topic_events}")
    started = time.monotonic()
    thread.start()
    try:
        if already >= args.events:
            say.detail(
                f"{settings.topic_events} already holds {already:,} messages: not replaying them again"
            )
        else:
            from tqdm import tqdm

            with tqdm(total=args.events, desc="replay", unit="ev", unit_scale=True, file=sys.stderr) as bar:
                produce(settings, settings.topic_events, lines_of(str(events_path), "user_id"), progress=bar)
        _wait_caught_up(settings, worker, thread)
        elapsed = time.monotonic() - started
        stats = worker.stats
        say.step("what the worker did")
        if stats.events == 0 and already >= args.events:
            say.detail(
                f"nothing new: group {settings.group_id} had already applied {settings.topic_events}; "
                "to watch it again: freshrec stack down && rm -rf .stack && ./scripts/demo.sh"
            )
        say.detail(
            f"{stats.events:,} events applied in {stats.batches:,} micro-batches "
            f"({stats.events_per_s:,.0f} events/s while busy; {elapsed:.1f} s in all), "
            f"{stats.rejected} dead-lettered, {handler.stats.skipped_events:,} skipped as already applied"
        )
        _show_profiles(settings, handler, events_path, say)
        if args.exit_when_done:
            return 0
        say.step("the worker keeps running: produce more events (freshrec produce / replay); Ctrl-C stops it")
        last = stats.events
        while thread.is_alive():
            thread.join(10.0)
            lag = group_lag(settings, [settings.topic_events]).get(settings.topic_events, 0)
            say.detail(
                f"{time.strftime('%H:%M:%S')} events {stats.events:,} (+{stats.events - last:,}), lag {lag:,}"
            )
            last = stats.events
        return 0
    except KeyboardInterrupt:
        say.detail("stopping: finishing the batch in hand and committing ...")
        return 0
    finally:
        worker.stop()
        thread.join(60.0)


def _wait_caught_up(
    settings: Settings, worker: Worker, thread: threading.Thread, timeout: float = 600.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if group_lag(settings, [settings.topic_events]).get(settings.topic_events, 1) == 0:
            return
        time.sleep(0.5)
    if not thread.is_alive():
        raise SystemExit("the worker stopped unexpectedly; see the log above")


def _show_profiles(settings: Settings, handler: ProfileHandler, events_path: Path, say: _Say) -> None:
    import json
    from collections import Counter

    counts: Counter[str] = Counter()
    last_ts = 0.0
    with events_path.open() as fh:
        for line in fh:
            event = json.loads(line)
            counts[event["user_id"]] += 1
            last_ts = max(last_ts, event["ts"] / 1000.0)
    store = handler.store
    user, n = counts.most_common(1)[0]
    profile = store.load_users([user]).get(user, {})
    say.step(f"profile of the most active user {user} ({n} events), served from Redis in Feast's format")
    for name in ("view_1h", "view_1d", "click_1d", "add_to_cart_7d", "purchase_total", "distinct_items"):
        if name in profile:
            say.detail(
                f"{name:<18} {profile[name]:.3f}"
                if isinstance(profile[name], float)
                else f"{name:<18} {profile[name]}"
            )
    if profile:
        say.detail(f"{'top_categories':<18} {', '.join(profile['top_categories'][:5])}")
        say.detail(f"{'session':<18} {profile['session_id']}: {profile['session_length']} events, "
                   f"last items {', '.join(profile['session_items'][:5])}")  # fmt: skip
    top = store.top_items(86400.0, 5, at=last_ts)
    say.step("trending items (1-day half-life, at the last event time)")
    for item, score in top:
        neighbours = ", ".join(i for i, _ in store.covisitation(item, 3, at=last_ts))
        say.detail(f"{item:<8} popularity {score:10.1f}   co-visited with: {neighbours}")
    say.detail(
        "read the same features through Feast: cd feature_repo && feast apply (see feature_repo/README.md)"
    )
    if handler.stage is not None:
        from streams.publish import latest_lists

        latest = latest_lists(settings, user).get(user)
        say.step(f"latest list published for {user} on {settings.topic_recommendations}")
        if latest is None:
            say.detail("none yet")
        else:
            for rank, item in enumerate(latest["items"], 1):
                say.detail(
                    f"{rank:>2}. {item['item_id']:<8} score {item['score']:.3f}  source {item['source']}"
                )
            say.detail(f"({handler.stats.published:,} lists published; follow them: freshrec tail)")
        say.step(
            "prequential quality in this run (each event scored against the list in force, then learned)"
        )
        results = handler.stage.metrics_result(len(handler.stage.recommender.catalog))
        k = handler.stage.config.k
        for name, r in results.items():
            line = f"{name:<13} HR@{k} {r['hr']:.3f}   NDCG {r['ndcg']:.3f}   MRR {r['mrr']:.3f}"
            say.detail(f"{line}   coverage {r['coverage']:.2f}   ({r['events']:,} events)")


class _Say:
    def step(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"   {text}", flush=True)
