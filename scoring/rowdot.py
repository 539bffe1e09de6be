"""Row-wise dot products of gathered rows, a bounded number of rows at a time.

Scoring a batch computes `a[ia[k]] · b[ib[k]]` for every candidate row k (hundreds of
thousands of rows for a batch of a few hundred users): gathering all of `a[ia]` and `b[ib]`
at once makes two temporaries of rows × dims floats each (~40 MB each for 300,000 rows of
16), which spike the worker's memory for the length of one call. `gathered_rowdot` gathers
`chunk` rows at a time: the same products, row by row, with temporaries of `chunk` rows.

>>> a = np.array([[1.0, 2.0], [3.0, 4.0]])
>>> b = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> gathered_rowdot(a, np.array([0, 1, 1]), b, np.array([0, 0, 1]), chunk=2)
array([1., 3., 4.])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from scoring.types import FloatArray

#: rows gathered at a time: 4,096 rows of 64 floats are 2 MB per operand (the cost of the
#: loop is a few microseconds a chunk)
CHUNK_ROWS = 4_096


def gathered_rowdot(
    a: NDArray[np.floating[Any]],
    ia: NDArray[np.int64],
    b: NDArray[np.floating[Any]],
    ib: NDArray[np.int64],
    chunk: int = CHUNK_ROWS,
) -> FloatArray:
    """`np.einsum("ij,ij->i", a[ia], b[ib])`, computed `chunk` rows at a time."""
    n = ia.shape[0]
    out = np.empty(n)
    for start in range(0, n, chunk):
        stop = start + chunk
        out[start:stop] = np.einsum("ij,ij->i", a[ia[start:stop]], b[ib[start:stop]])
    return out
