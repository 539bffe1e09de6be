"""Quality on a small simulated stream: freshrec against both baselines, prequentially.

The benchmark at the bottom prints the numbers for the default-size simulated world (it
takes minutes, so it only runs with FRESHREC_SCORING_BENCH=1):

    FRESHREC_SCORING_BENCH=1 .venv/bin/python -m pytest tests/test_scoring_quality.py -s -k bench
"""

from __future__ import annotations

from typing import Any

from scoring.harness import events_from_dicts, items_from_dicts, replay
from streams.simulate import SimulationConfig, generate_events, generate_items

SMALL = SimulationConfig(seed=11, users=300, items=300, categories=10, events=5_000)


def _run(cfg: SimulationConfig) -> dict[str, Any]:
    items = items_from_dicts(generate_items(cfg))
    events = events_from_dicts(generate_events(cfg))
    return replay(events, items, k=10)


def _table(res: dict[str, Any]) -> str:
    lines = [f"{'':14}{'HR@10':>8}{'NDCG@10':>9}{'MRR':>8}{'cov':>7}{'ILD':>7}{'cold HR':>9}"]
    for name, m in res["metrics"].items():
        c = res["cold_start"][name]
        lines.append(
            f"{name:14}{m['hr']:8.4f}{m['ndcg']:9.4f}{m['mrr']:8.4f}{m['coverage']:7.3f}{m['ild']:7.3f}{c['hr']:9.4f}"
        )
    lines.append(f"{res['us_per_user']:.0f} µs per user list, {res['seconds']:.1f} s in all")
    return "\n".join(lines)


def test_freshrec_beats_popularity_on_a_small_simulated_stream() -> None:
    res = _run(SMALL)
    print("\n" + _table(res))
    m = res["metrics"]
    assert m["freshrec"]["hr"] > 1.5 * m["popularity"]["hr"]
    assert m["freshrec"]["ndcg"] > 1.5 * m["popularity"]["ndcg"]
    assert m["freshrec"]["hr"] > m["covisitation"]["hr"]
    cold = res["cold_start"]
    assert cold["freshrec"]["events"] > 300
    assert cold["freshrec"]["hr"] > cold["popularity"]["hr"]
