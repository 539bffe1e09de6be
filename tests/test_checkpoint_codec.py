"""The checkpoint blob: pickled straight into the compressor, the same stream as the one-shot
`zlib.compress(pickle.dumps(state), 1)` of earlier checkpoints, which still load."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.checkpoint import MAGIC, _Deflater, decode, encode

leaves = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary())
trees = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
    max_leaves=12,
)
states = st.dictionaries(st.text(max_size=8), trees, max_size=6)


@given(states)
@settings(max_examples=100, deadline=None)
def test_streamed_blob_holds_the_same_pickle_as_the_one_shot_reference(state: dict[str, object]) -> None:
    blob = encode(state)
    assert blob.startswith(MAGIC)
    assert zlib.decompress(blob[len(MAGIC) :]) == pickle.dumps(state, protocol=5)
    assert decode(blob) == state


def test_a_checkpoint_made_the_one_shot_way_still_loads() -> None:
    state = {"format": 5, "w": np.arange(50_000, dtype=np.float64), "ids": [f"u{i}" for i in range(1000)]}
    old = MAGIC + zlib.compress(pickle.dumps(state, protocol=5), 1)
    for blob in (old, encode(state)):
        back = decode(blob)
        assert np.array_equal(back["w"], state["w"]) and back["ids"] == state["ids"]


def test_large_arrays_reach_the_compressor_as_buffers_in_frames() -> None:
    """pickle hands the file 64 KB frames, and a numpy array as one buffer, never a copy of
    the whole pickle."""
    seen: list[int] = []

    class Spy(_Deflater):
        def write(self, data: bytes | memoryview | pickle.PickleBuffer) -> int:
            seen.append(memoryview(data).nbytes)
            return super().write(data)

    state = {"a": np.ones(1_000_000), "d": {i: str(i) for i in range(100_000)}}
    out = Spy()
    pickle.dump(state, out, protocol=5)
    blob = out.close()
    raw = pickle.dumps(state, protocol=5)
    assert out.raw_bytes == len(raw) == sum(seen)
    assert max(seen) == 8_000_000  # the array, passed through
    assert sorted(seen)[-2] <= 70_000  # the rest: frames of ~64 KB
    assert len(blob) < len(raw) // 10
