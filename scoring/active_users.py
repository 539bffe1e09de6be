"""The users whose per-user model state is kept in memory: the most recently active, at most
`cap` of them, so the models' memory stays flat however many users a worker has seen.

Every learned event touches its user; beyond `cap` the least recently active user is dropped.
The recommender drops the dropped users' state from its models (MF factors, rating biases
and factors, the remembered kNN history, a pending exploration) at a point where no update
is in flight (`take_dropped`), and such a user comes back as a cold user. A dropped user who
is active again before that point keeps their state.

>>> users = ActiveUsers(cap=2)
>>> for u in ["a", "b", "a", "c"]:
...     users.touch(u)
>>> list(users), users.take_dropped(), users.take_dropped()
(['a', 'c'], ['b'], [])
>>> users.touch("b"); users.touch("a"); users.take_dropped()  # "c" dropped, then "a" touched
['c']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["ActiveUsers"]


class ActiveUsers:
    """Users by recency of their last learned event (least recent first), at most `cap`
    (0: no bound); the dropped ones wait in `take_dropped` (see module doc)."""

    __slots__ = ("_dropped", "_order", "cap")

    def __init__(self, cap: int = 0, users: Iterable[str] = ()) -> None:
        self.cap = cap
        self._order: dict[str, None] = dict.fromkeys(users)
        self._dropped: list[str] = []
        self._trim()

    def touch(self, user: str) -> None:
        """`user` is the most recently active now (drops the least recent beyond `cap`)."""
        order = self._order
        order.pop(user, None)
        order[user] = None
        if self.cap and len(order) > self.cap:
            self._trim()

    def limit(self, cap: int) -> None:
        """A new bound (0: none); users beyond it are dropped at once, least recent first.

        >>> users = ActiveUsers(users=["a", "b", "c"])
        >>> users.limit(1); list(users), users.take_dropped()
        (['c'], ['a', 'b'])
        """
        self.cap = cap
        self._trim()

    def _trim(self) -> None:
        order = self._order
        while self.cap and len(order) > self.cap:
            oldest = next(iter(order))
            del order[oldest]
            self._dropped.append(oldest)

    def discard(self, user: str) -> None:
        """Forget `user` without queueing it as dropped (the caller drops its state)."""
        self._order.pop(user, None)

    def take_dropped(self) -> list[str]:
        """The users dropped since the last call who have not been active again since."""
        dropped, self._dropped = self._dropped, []
        order = self._order
        return [u for u in dict.fromkeys(dropped) if u not in order]

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, user: object) -> bool:
        return user in self._order

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)
