"""The simulated stream: deterministic, time-ordered, valid, realistic, and personal.

Speed is printed (run with `-s`), never asserted.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from profiles.events import EVENT_TYPES
from streams.errors import ConfigError
from streams.simulate import (
    SimulationConfig,
    generate_events,
    generate_items,
    simulate_to_files,
    write_jsonl,
)

SMALL = SimulationConfig(seed=11, users=3_000, items=1_500, categories=30, events=50_000)
MIN_MS = 31_536_000_000  # 1971-01-01, as the decoder checks
MAX_MS = 4_102_444_800_000  # 2100-01-01


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate_events(SMALL))


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    return generate_items(SMALL)


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def check_event(ev: Mapping[str, Any]) -> None:
    """The event contract, checked independently of `streams.contract`."""
    allowed = {"event_id", "type", "user_id", "item_id", "ts", "session_id", "value", "context"}
    assert set(ev) <= allowed, ev
    assert ev["type"] in EVENT_TYPES
    for key in ("event_id", "user_id", "item_id"):
        assert isinstance(ev[key], str) and 0 < len(ev[key]) <= 512
    assert "session_id" not in ev or (isinstance(ev["session_id"], str) and ev["session_id"])
    assert type(ev["ts"]) is int and MIN_MS <= ev["ts"] < MAX_MS
    if "value" in ev:
        assert isinstance(ev["value"], int | float) and math.isfinite(ev["value"])
    if "context" in ev:
        assert isinstance(ev["context"], dict)
    json.dumps(ev, allow_nan=False)  # serialisable as strict JSON


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    cfg = SimulationConfig(seed=5, users=500, items=300, categories=10, events=5_000)
    a = list(generate_events(cfg))
    assert a == list(generate_events(cfg))
    assert generate_items(cfg) == generate_items(cfg)
    other = SimulationConfig(seed=6, users=500, items=300, categories=10, events=5_000)
    b = list(generate_events(other))
    assert len(a) == len(b) == 5_000
    assert [(e["user_id"], e["item_id"]) for e in a] != [(e["user_id"], e["item_id"]) for e in b]
    assert generate_items(cfg) != generate_items(other)


def test_exact_count_and_ids(events: Sequence[dict[str, Any]]) -> None:
    assert len(events) == SMALL.events
    assert [e["event_id"] for e in events[:3]] == ["sim-11-0", "sim-11-1", "sim-11-2"]
    assert len({e["event_id"] for e in events}) == len(events)
    assert list(generate_events(SimulationConfig(events=0, users=10, items=50, categories=5))) == []


def test_event_time_never_goes_back(events: Sequence[dict[str, Any]]) -> None:
    ts = [e["ts"] for e in events]
    assert all(a <= b for a, b in itertools.pairwise(ts))
    assert ts[0] >= SMALL.start_ms
    # Within a session, events are strictly ordered (funnel steps never share a millisecond).
    by_session: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if "session_id" in e:
            by_session[e["session_id"]].append(e["ts"])
    assert all(all(a < b for a, b in itertools.pairwise(v)) for v in by_session.values())


def test_every_event_meets_the_contract(events: Sequence[dict[str, Any]]) -> None:
    for ev in events:
        check_event(ev)


def test_items_meet_the_contract(items: Sequence[dict[str, Any]]) -> None:
    assert [i["item_id"] for i in items] == [f"i{n}" for n in range(SMALL.items)]
    for item in items:
        assert isinstance(item["title"], str) and item["title"]
        assert isinstance(item["categories"], list) and 1 <= len(item["categories"]) <= 2
        assert all(isinstance(c, str) for c in item["categories"])
        assert item["attributes"]["price"] > 0 and isinstance(item["attributes"]["brand"], str)
        assert item["created_at"].endswith("Z")
        assert datetime.fromisoformat(item["created_at"]).utcoffset() is not None
    assert len({c for i in items for c in i["categories"]}) == SMALL.categories


def test_type_mix_is_a_funnel(events: Sequence[dict[str, Any]]) -> None:
    share = {t: n / len(events) for t, n in Counter(e["type"] for e in events).items()}
    print("\ntype shares:", {t: round(s, 3) for t, s in sorted(share.items())})
    assert share["view"] > share["click"] > share["add_to_cart"] > share["purchase"] > 0
    assert share["view"] > 0.5
    assert "rate" not in share
    purchases = [e for e in events if e["type"] == "purchase"]
    assert all(e["value"] > 0 for e in purchases)


def test_rate_share_gives_half_star_ratings() -> None:
    cfg = SimulationConfig(seed=2, users=500, items=300, categories=10, events=20_000, rate_share=0.3)
    rates = [e for e in generate_events(cfg) if e["type"] == "rate"]
    assert abs(len(rates) / cfg.events - 0.3) < 0.02
    values = Counter(e["value"] for e in rates)
    assert set(values) <= {x / 2 for x in range(1, 11)}
    assert len(values) >= 6  # the whole scale is used, not a constant


def test_popularity_is_heavy_tailed(events: Sequence[dict[str, Any]]) -> None:
    counts = sorted(Counter(e["item_id"] for e in events).values(), reverse=True)
    top_tenth = sum(counts[: len(counts) // 10]) / len(events)
    bottom_half = sum(counts[len(counts) // 2 :]) / len(events)
    print(f"\ntop 10% of items: {top_tenth:.2f} of events; bottom half: {bottom_half:.2f}")
    assert top_tenth > 0.5
    assert bottom_half < 0.1


def test_new_items_appear_over_time(
    events: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]]
) -> None:
    created = {i["item_id"]: _ms(i["created_at"]) for i in items}
    new = {k for k, c in created.items() if c >= SMALL.start_ms}
    assert abs(len(new) / SMALL.items - SMALL.new_item_share) < 0.01
    first_seen: dict[str, int] = {}
    for e in events:
        assert e["ts"] >= created[e["item_id"]], "an item is used before it exists"
        first_seen.setdefault(e["item_id"], e["ts"])
    mid = (events[0]["ts"] + events[-1]["ts"]) // 2
    seen_new = [first_seen[k] for k in new if k in first_seen]
    assert len(seen_new) > 0.5 * len(new)
    assert sum(t > mid for t in seen_new) > 0.25 * len(seen_new)


def test_new_users_arrive_over_time(events: Sequence[dict[str, Any]]) -> None:
    first_seen: dict[str, int] = {}
    for e in events:
        first_seen.setdefault(e["user_id"], e["ts"])
    mid = (events[0]["ts"] + events[-1]["ts"]) // 2
    late = sum(t > mid for t in first_seen.values()) / len(first_seen)
    assert late > 0.05


def test_share_of_events_with_session_id(events: Sequence[dict[str, Any]]) -> None:
    share = sum("session_id" in e for e in events) / len(events)
    print(f"\nshare with session_id: {share:.3f}")
    assert abs(share - SMALL.session_id_share) < 0.03
    assert share < 1.0  # gap-based sessionization gets work too


def test_sessions_focus_on_few_categories(
    events: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]]
) -> None:
    category = {i["item_id"]: i["categories"][0] for i in items}
    sessions: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if "session_id" in e:
            sessions[e["session_id"]].append(category[e["item_id"]])
    long = [v for v in sessions.values() if len(v) >= 5]
    within_three = sum(len(set(v)) <= 3 for v in long) / len(long)
    assert within_three > 0.8


def _next_item_pairs(events: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str]]:
    """(current, next distinct) item pairs inside sessions that carry a session_id."""
    last: dict[str, str] = {}
    for e in events:
        sid = e.get("session_id")
        if sid is None:
            continue
        prev = last.get(sid)
        if prev is not None and prev != e["item_id"]:
            yield prev, e["item_id"]
        last[sid] = e["item_id"]


def next_item_hit_rates(
    events: Sequence[Mapping[str, Any]], k: int = 10, train_share: float = 0.8
) -> tuple[int, float, float]:
    """HR@k of global popularity and of session co-visitation, trained on the first part."""
    cut = int(len(events) * train_share)
    train, test = events[:cut], events[cut:]
    popular = [i for i, _ in Counter(e["item_id"] for e in train).most_common(k + 1)]
    covisit: dict[str, Counter[str]] = defaultdict(Counter)
    history: dict[str, list[str]] = defaultdict(list)
    for e in train:
        sid = e.get("session_id")
        if sid is None:
            continue
        seen, item = history[sid], e["item_id"]
        for other in seen[-3:]:
            if other != item:
                covisit[other][item] += 1
                covisit[item][other] += 1
        if not seen or seen[-1] != item:
            seen.append(item)
    n = hits_pop = hits_covisit = 0
    for current, nxt in _next_item_pairs(test):
        n += 1
        by_pop = [i for i in popular if i != current][:k]
        by_covisit = [i for i, _ in covisit[current].most_common(k)] if current in covisit else []
        by_covisit += [i for i in by_pop if i not in by_covisit][: k - len(by_covisit)]
        hits_pop += nxt in by_pop
        hits_covisit += nxt in by_covisit
    return n, hits_pop / n, hits_covisit / n


def test_covisitation_beats_popularity(events: Sequence[dict[str, Any]]) -> None:
    n, hr_pop, hr_covisit = next_item_hit_rates(events)
    print(f"\nnext-item HR@10 on {n} pairs: popularity {hr_pop:.3f}, co-visitation {hr_covisit:.3f}")
    assert n > 1_000
    assert hr_covisit > 1.5 * hr_pop


def test_users_return_to_their_categories(
    events: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]]
) -> None:
    """Across sessions: a user's own top categories predict a new session's first item
    better than global popularity (the signal MF and user profiles live on)."""
    category = {i["item_id"]: i["categories"][0] for i in items}
    cut = int(len(events) * 0.8)
    train, test = events[:cut], events[cut:]
    popularity = Counter(e["item_id"] for e in train)
    top = [i for i, _ in popularity.most_common(10)]
    ranked_in: dict[str, list[str]] = defaultdict(list)
    for item, _ in popularity.most_common():
        ranked_in[category[item]].append(item)
    user_cats: dict[str, Counter[str]] = defaultdict(Counter)
    for e in train:
        user_cats[e["user_id"]][category[e["item_id"]]] += 1
    started: set[str] = set()
    n = hits_pop = hits_user = 0
    for e in test:
        sid = e.get("session_id")
        if sid is None or sid in started:
            continue
        started.add(sid)
        if e["user_id"] not in user_cats:
            continue
        first, *rest = [c for c, _ in user_cats[e["user_id"]].most_common(2)]
        mine = ranked_in[first][:7] + (ranked_in[rest[0]][:3] if rest else ranked_in[first][7:10])
        n += 1
        hits_pop += e["item_id"] in top
        hits_user += e["item_id"] in mine
    print(
        f"\nfirst item of a returning user's session, HR@10 on {n}: "
        f"popularity {hits_pop / n:.3f}, user's categories {hits_user / n:.3f}"
    )
    assert n > 300
    assert hits_user > 1.3 * hits_pop


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("events", -1),
        ("p_click", 1.5),
        ("rate_share", -0.1),
        ("mean_session_length", 0.5),
        ("start", "2026-01-01T00:00:00"),
        ("start", "soon"),
        ("categories", 5_000),
        ("new_user_share", 1.0),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        SimulationConfig(**{field: value})


def test_simulate_to_files(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=4, users=300, items=200, categories=8, events=3_000)
    counts = simulate_to_files(cfg, tmp_path / "ev.jsonl", tmp_path / "items.jsonl.gz", progress=False)
    lines = (tmp_path / "ev.jsonl").read_text().splitlines()
    assert counts.events == len(lines) == 3_000
    assert counts.items == 200
    assert sum(counts.by_type.values()) == 3_000
    assert [json.loads(x) for x in lines] == list(generate_events(cfg))
    assert counts.first_ts == json.loads(lines[0])["ts"]
    assert counts.last_ts == json.loads(lines[-1])["ts"]
    assert write_jsonl(tmp_path / "empty.jsonl", []) == 0


def test_generation_speed_is_printed() -> None:
    cfg = SimulationConfig(seed=1, events=100_000)
    start = time.perf_counter()
    n = sum(1 for _ in generate_events(cfg))
    elapsed = time.perf_counter() - start
    print(f"\ngenerated {n} events in {elapsed:.2f} s: {n / elapsed:,.0f} events/s")
