"""`event_id` is the idempotency key: repeats within the dedupe window are dropped, the same
way before and after a restart (the window is rebuilt from the log). Property tests against
the brute-force rule, then the real worker on a real broker and Redis."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams.contract import decode_event, decode_item
from streams.dedupe import Deduplicator, naive_duplicates
from streams.errors import Coordinates
from streams.handlers import ProfileHandler, make_store, profile_config
from streams.ingest import encode_rows, produce
from streams.simulate import SimulationConfig, generate_events, generate_items
from streams.worker import Worker
from tests.helpers import compare_store_with_reference, read_topic

HERE = Coordinates("test", 0, 0)

logs = st.lists(st.tuples(st.integers(0, 1), st.sampled_from("abcdefgh")), max_size=80)


def _with_offsets(log: list[tuple[int, str]]) -> list[tuple[tuple[str, int], int, str]]:
    next_offset = [0, 0]
    out = []
    for p, eid in log:
        out.append((("events", p), next_offset[p], eid))
        next_offset[p] += 1 + (len(out) % 3 == 0)  # gaps: offsets of dead letters or forgets
    return out


@given(logs, st.integers(1, 12))
def test_sliding_window_equals_the_brute_force_rule(log, window):
    events = _with_offsets(log)
    d = Deduplicator(window)
    assert [d.is_duplicate(p, o, e) for p, o, e in events] == naive_duplicates(events, window)


@given(logs, st.integers(1, 12), st.integers(0, 80))
@hsettings(max_examples=200)
def test_a_window_rebuilt_from_the_log_decides_as_the_original(log, window, restart_at):
    events = _with_offsets(log)
    expected = naive_duplicates(events, window)
    d = Deduplicator(window)
    decided = [d.is_duplicate(p, o, e) for p, o, e in events[:restart_at]]
    fresh = Deduplicator(window)  # a new process: each partition's window is read back
    for p, o, e in events[restart_at:]:
        if not fresh.knows(p):
            fresh.start(p, [(o2, e2) for q, o2, e2 in events if q == p and o - window <= o2 < o])
        decided.append(fresh.is_duplicate(p, o, e))
    assert decided == expected


@pytest.mark.stack
def test_resent_events_are_dropped_across_a_restart_and_profiles_equal_the_reference(settings):
    s = replace(settings, dedupe_window=400)
    cfg = SimulationConfig(seed=3, users=120, items=100, categories=6, events=3000)
    item_rows = generate_items(cfg)
    rows = list(generate_events(cfg))
    rng = random.Random(7)
    sent = []
    for k, row in enumerate(rows):
        sent.append(row)
        if k >= 50 and rng.random() < 0.08:  # a producer resends an earlier event
            sent.append(dict(rows[k - rng.choice([1, 5, 50])]))
    produce(s, s.topic_items, encode_rows(item_rows, "item_id"))
    produce(s, s.topic_events, encode_rows(sent, "user_id"))
    messages = read_topic(s, s.topic_events, len(sent))
    log = sorted(((m.topic(), m.partition()), m.offset(), decode_event(m.value(), HERE)) for m in messages)
    duplicate = naive_duplicates([(p, o, e.event_id) for p, o, e in log], s.dedupe_window)
    kept = [e for (_, _, e), dup in zip(log, duplicate, strict=True) if not dup]
    assert len(log) == len(sent)
    assert sum(duplicate) == len(sent) - len(rows)  # every resend is within the window

    first = Worker(s, ProfileHandler(s))
    first.run(max_events=len(kept) // 2, idle_timeout_s=30)
    second = Worker(s, ProfileHandler(s))  # a restart: windows rebuilt from the log
    second.run(max_events=len(kept), idle_timeout_s=10)
    assert first.stats.duplicates + second.stats.duplicates == sum(duplicate)
    items = [decode_item(json.dumps(r).encode(), HERE) for r in item_rows]
    problems = compare_store_with_reference(make_store(s), kept, items, profile_config(s))
    assert not problems, "\n".join(problems[:20])
