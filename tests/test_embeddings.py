"""Hashed item vectors: deterministic across processes, unit length, content-sensitive."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from profiles.embeddings import SentenceEmbedder, hashed_vector, id_vector, item_features, item_vector
from profiles.events import Item

HEAT = Item("i1", title="Heat", categories=("Crime", "Thriller"), attributes={"year": 1995})


def test_unit_float32_of_the_requested_dim() -> None:
    for dim in (1, 8, 32, 384):
        for v in (item_vector(HEAT, "i1", dim), item_vector(None, "zz", dim)):
            assert v.dtype == np.float32 and v.shape == (dim,)
            assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        item_vector(HEAT, "i1", 0)


def test_same_vector_in_another_process() -> None:
    code = (
        "import sys\n"
        "from profiles.embeddings import item_vector\n"
        "from profiles.events import Item\n"
        "it = Item('i1', title='Heat', categories=('Crime', 'Thriller'), attributes={'year': 1995})\n"
        "a = item_vector(it, 'i1', 32).tobytes().hex()\n"
        "b = item_vector(None, 'x9', 32).tobytes().hex()\n"
        "sys.stdout.write(a + ' ' + b)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    ).stdout.split()
    assert out == [item_vector(HEAT, "i1", 32).tobytes().hex(), item_vector(None, "x9", 32).tobytes().hex()]


def test_content_drives_similarity() -> None:
    heat2 = Item("i2", title="Heat", categories=("Crime", "Thriller"), attributes={"year": 1995})
    same_genre = Item("i3", title="Ronin", categories=("Crime", "Thriller"))
    other = Item("i4", title="Toy Story", categories=("Animation", "Children"))
    v1 = item_vector(HEAT, "i1", 64)
    assert np.array_equal(v1, item_vector(heat2, "i2", 64))  # content only, not the id
    assert float(v1 @ item_vector(same_genre, "i3", 64)) > float(v1 @ item_vector(other, "i4", 64))


def test_unknown_and_empty_items_get_an_id_vector() -> None:
    assert np.array_equal(item_vector(None, "i7", 16), id_vector("i7", 16))
    assert np.array_equal(item_vector(Item("i7"), "i7", 16), id_vector("i7", 16))
    assert not np.array_equal(id_vector("i7", 16), id_vector("i8", 16))


def test_features_and_signed_hashing() -> None:
    assert list(item_features(HEAT)) == [
        ("t:heat", 1.0),
        ("c:crime", 2.0),
        ("c:thriller", 2.0),
        ("a:year=1995", 1.0),
    ]
    v = hashed_vector(iter([("t:a", 1.0)]), 8)
    assert sorted(np.abs(v).tolist()) == [0.0] * 7 + [1.0]
    assert not hashed_vector(iter([]), 8).any()


@pytest.mark.sentence
def test_sentence_embedder_projects_to_dim() -> None:
    """Opt-in (`pytest -m sentence`, after `pip install -e .[sentence]`): the model needs torch."""
    emb = SentenceEmbedder(dim=32)
    a = emb.item_vector(HEAT, "i1")
    b = emb.item_vector(Item("i3", title="Ronin", categories=("Crime", "Thriller")), "i3")
    c = emb.item_vector(Item("i4", title="Toy Story", categories=("Animation", "Children")), "i4")
    assert a.shape == (32,) and a.dtype == np.float32
    assert float(np.linalg.norm(a)) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(a, SentenceEmbedder(dim=32).item_vector(HEAT, "i1"))
    assert float(a @ b) > float(a @ c)
