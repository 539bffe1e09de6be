"""Where the hits are: prequential HR@K split by event type and by what the target was to
the user (new, already seen in the current session, seen in an earlier session).

Each event is scored against every model's list (the same lists as the headline metrics)
and counted in two tables: `by_type` (view, click, ...) and `by_target`:

- `new`: the user never interacted with the item before this event;
- `session`: the user interacted with it earlier in the current session (a session ends
  after `session_gap_s` of inactivity, as in the profiles);
- `earlier`: seen before, but not in the current session.

Every cell holds the events it counts, their share of all events, and each model's HR@K
within the cell, so `share x HR` per cell adds up to the model's overall HR.

>>> b = HitBreakdown(("a", "b"), k=2, session_gap_s=60.0)
>>> from scoring.types import Interaction
>>> b.update(Interaction("u", "i1", 0.0, "view"), set(), {"a": ["i1"], "b": []})
>>> b.update(Interaction("u", "i1", 5.0, "click"), {"i1"}, {"a": ["i1"], "b": ["i2"]})
>>> b.update(Interaction("u", "i1", 500.0, "view"), {"i1"}, {"a": [], "b": ["i1"]})
>>> r = b.result()
>>> r["by_target"]["session"]
{'events': 1, 'share': 0.3333, 'a': 1.0, 'b': 0.0}
>>> r["by_target"]["earlier"]["b"], r["by_type"]["view"]["events"]
(1.0, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from scoring.types import Interaction

__all__ = ["HitBreakdown"]


class HitBreakdown:
    """HR@`k` of several models, split by event type and by the target's novelty."""

    def __init__(self, models: Sequence[str], k: int, session_gap_s: float) -> None:
        self.models = tuple(models)
        self.k = k
        self.gap = session_gap_s
        self.n = 0
        self.cells: dict[str, dict[str, list[int]]] = {"by_type": {}, "by_target": {}}
        self._session: dict[str, tuple[float, set[str]]] = {}

    def update(self, event: Interaction, seen: Set[str], lists: Mapping[str, Sequence[str]]) -> None:
        """Count `event` (before anything learned it) with the user's `seen` items and each
        model's list; then remember it in the user's session."""
        last, items = self._session.get(event.user_id, (-float("inf"), set()))
        same_session = event.ts <= last + self.gap
        if event.item_id not in seen:
            target = "new"
        elif same_session and event.item_id in items:
            target = "session"
        else:
            target = "earlier"
        hits = [int(event.item_id in lists[m][: self.k]) for m in self.models]
        for table, key in (("by_type", event.type), ("by_target", target)):
            cell = self.cells[table].setdefault(key, [0] * (1 + len(self.models)))
            cell[0] += 1
            for j, h in enumerate(hits):
                cell[1 + j] += h
        self.n += 1
        if not same_session:
            items = set()
        items.add(event.item_id)
        self._session[event.user_id] = (max(last, event.ts), items)

    def result(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{table: {key: {"events", "share", model: HR}}} (HR within the cell)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for table, cells in self.cells.items():
            out[table] = {}
            for key in sorted(cells):
                cell = cells[key]
                row: dict[str, Any] = {"events": cell[0], "share": round(cell[0] / max(self.n, 1), 4)}
                for j, m in enumerate(self.models):
                    row[m] = round(cell[1 + j] / cell[0], 4) if cell[0] else 0.0
                out[table][key] = row
        return out
