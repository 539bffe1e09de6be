"""Hashed content vectors for items (the same recipe as `profiles.embeddings`, re-stated here
because scoring imports nothing from profiles; the worker may pass its own vectors instead).

Features: lower-cased word tokens of the title (`t:heat`, weight 1), categories (`c:crime`,
weight 2) and attribute pairs (`a:brand=x`, weight 1), signed-hashed with MurmurHash3
(64-bit, seed 0) into `dim` buckets and L2-normalised. Items without content get a
pseudo-random unit vector seeded by their id.

>>> v = content_vector("Heat (1995)", ("Crime",), {}, "i1", 8)
>>> v.shape, round(float(np.linalg.norm(v)), 6)
((8,), 1.0)
>>> bool(np.array_equal(v, content_vector("heat (1995)", ("crime",), {}, "other", 8)))
True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import mmh3
import numpy as np

from scoring.types import FloatArray

__all__ = ["content_vector", "id_vector"]

_TOKEN: Final = re.compile(r"\w+", re.UNICODE)


def id_vector(item_id: str, dim: int) -> FloatArray:
    """A unit vector determined by the item id alone (same digest as profiles).

    >>> bool(np.array_equal(id_vector("x", 4), id_vector("x", 4)))
    True
    """
    seed = int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest())
    v = np.random.default_rng(seed).standard_normal(dim)
    out: FloatArray = v / float(np.linalg.norm(v))
    return out


def content_vector(
    title: str | None,
    categories: Sequence[str],
    attributes: Mapping[str, Any],
    item_id: str,
    dim: int,
) -> FloatArray:
    """Signed feature hashing of title tokens, categories and attributes (unit float64)."""
    acc = np.zeros(dim, dtype=np.float64)
    feats: list[tuple[str, float]] = []
    if title:
        feats.extend((f"t:{tok}", 1.0) for tok in _TOKEN.findall(title.lower()))
    feats.extend((f"c:{c.strip().lower()}", 2.0) for c in categories)
    for key in sorted(attributes):
        value = attributes[key]
        values: Sequence[Any] = value if isinstance(value, list | tuple) else (value,)
        for v in values:
            if isinstance(v, Mapping) or v is None:
                continue
            feats.append((f"a:{str(key).lower()}={str(v).lower()}", 1.0))
    for name, weight in feats:
        h1, h2 = mmh3.hash64(name, 0, signed=False)
        acc[h1 % dim] += weight if h2 & 1 else -weight
    norm = float(np.linalg.norm(acc))
    if norm == 0.0:
        return id_vector(item_id, dim)
    out: FloatArray = acc / norm
    return out
