"""`gathered_rowdot` against a plain loop and against the one-shot einsum it replaces."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.rowdot import gathered_rowdot


@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 40),
    st.integers(1, 9),
    st.integers(0, 2**31),
)
@settings(max_examples=200, deadline=None)
def test_rowdot_equals_a_plain_loop_and_the_one_shot_einsum(dims, na, nb, n, chunk, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(na, dims)).astype(np.float32)
    b = rng.normal(size=(nb, dims))
    ia = rng.integers(0, na, n)
    ib = rng.integers(0, nb, n)
    got = gathered_rowdot(a, ia, b, ib, chunk=chunk)
    naive = [sum(float(a[i, j]) * float(b[k, j]) for j in range(dims)) for i, k in zip(ia, ib, strict=True)]
    assert got.shape == (n,) and got.dtype == np.float64
    assert np.allclose(got, naive, rtol=1e-6, atol=1e-9)
    assert np.array_equal(got, np.einsum("ij,ij->i", a[ia], b[ib]))  # chunking changes nothing
