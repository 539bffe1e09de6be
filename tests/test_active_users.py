"""Per-user model state is bounded: the recommender keeps MF factors, rating state and kNN
histories for the most recently active users only; a dropped user comes back cold."""

from __future__ import annotations

import pickle

import numpy as np

from scoring.active_users import ActiveUsers
from scoring.recommender import Recommender, RecommenderConfig
from scoring.types import CandidateInputs, Interaction, UserContext


def _recommender(cap: int) -> Recommender:
    rec = Recommender(RecommenderConfig(dim=4, explore=False))
    for n in range(20):
        rec.add_item(f"i{n}", np.eye(4)[n % 4] + 0.1 * n, (f"c{n % 3}",))
    rec.limit_users(cap)
    return rec


def _learn(rec: Recommender, user: str, item: str, ts: float, kind: str = "click") -> None:
    ctx = UserContext(user, ts, recent_items=(), seen_items=frozenset(), n_events=0)
    value = 4.0 if kind == "rate" else None
    rec.learn(Interaction(user, item, ts, kind, value), ctx, CandidateInputs({}, [("i1", 1.0)]))


def _users_held(rec: Recommender) -> set[str]:
    held = set(rec.mf.users) | set(rec.histories)
    return held | set(rec.rating.model.u_biases) | set(rec.rating.model.u_latents)


def test_model_state_stays_within_the_cap_least_recently_active_dropped():
    rec = _recommender(cap=3)
    for n in range(30):
        _learn(rec, f"u{n % 10}", f"i{n % 20}", 1000.0 + n, "rate" if n % 2 else "click")
        # dropped users' state goes at the next learning: at most one batch's users over the cap
        assert len(_users_held(rec)) <= 3 + 1
    assert list(rec.active) == ["u7", "u8", "u9"]
    assert _users_held(rec) <= {"u6", "u7", "u8", "u9"}
    assert rec.users_in_models() <= 4


def test_the_mf_reuses_the_rows_of_dropped_users():
    rec = _recommender(cap=3)
    for n in range(500):
        _learn(rec, f"u{n}", f"i{n % 20}", 1000.0 + n)
    assert rec.users_in_models() <= 4
    assert rec.mf.user_matrix.shape[0] == 64  # its initial size: 500 users met, rows reused


def test_a_dropped_user_comes_back_cold():
    rec = _recommender(cap=2)
    for _ in range(5):
        _learn(rec, "u0", "i3", 1000.0, "rate")
    assert np.any(rec.mf.scores("u0", np.arange(4)) != 0.0)
    for n, user in enumerate(["u1", "u2", "u3"]):
        _learn(rec, user, "i4", 1001.0 + n)
    assert "u0" not in rec.active and "u0" not in _users_held(rec)
    assert rec.mf.scores("u0", np.arange(4)).tolist() == [0.0] * 4  # an unknown user's logits
    # the rating model predicts from the global mean and the item's bias only
    m = rec.rating.model
    assert rec.predict_rating("u0", "i3") == min(max(m.global_mean.get() + m.i_biases["i3"], 0.5), 5.0)


def test_without_a_cap_nothing_is_dropped_and_the_bound_survives_a_checkpoint():
    rec = _recommender(cap=0)
    for n in range(12):
        _learn(rec, f"u{n}", f"i{n}", 1000.0 + n)
    assert rec.users_in_models() == 12 and len(rec.active) == 12
    rec.limit_users(5)
    _learn(rec, "u0", "i0", 2000.0)  # u0..u6 dropped before this learning, u7 by it (pending)
    assert list(rec.active) == ["u8", "u9", "u10", "u11", "u0"]
    assert set(rec.mf.users) == {"u7", "u8", "u9", "u10", "u11", "u0"}
    restored = Recommender.from_state(pickle.loads(pickle.dumps(rec.state())))
    assert list(restored.active) == list(rec.active) and restored.active.cap == 5


def test_forget_drops_every_model_state_of_the_user():
    rec = _recommender(cap=0)
    _learn(rec, "u1", "i2", 1000.0, "rate")
    assert "u1" in _users_held(rec)
    rec.forget("u1")
    assert "u1" not in _users_held(rec) and "u1" not in rec.active


def test_active_users_queue_only_users_still_inactive():
    users = ActiveUsers(cap=1)
    users.touch("a")
    users.touch("b")  # drops a
    users.touch("a")  # drops b; a is back
    assert users.take_dropped() == ["b"]
