"""`freshrec replay` maps a real dataset onto the contract and puts it on the real broker."""

from __future__ import annotations

import csv
import json

import pytest

from streams.cli import main
from streams.contract import decode_event
from streams.errors import Coordinates, DecodeError
from tests.helpers import read_topic, shared_data_dir

pytestmark = pytest.mark.stack

RATINGS = shared_data_dir() / "ml-latest-small" / "ratings.csv"
ML_MAP = "user_id=userId,item_id=movieId,ts=timestamp:s,type=const:rate,value=rating"


def _env(mp: pytest.MonkeyPatch, settings) -> None:
    mp.setenv("FRESHREC_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    mp.setenv("FRESHREC_TOPIC_EVENTS", settings.topic_events)


def test_replay_movielens_through_a_column_mapping(settings, monkeypatch, capsys):
    assert RATINGS.exists(), f"the shared dataset is missing: {RATINGS}"
    _env(monkeypatch, settings)
    assert (
        main(["replay", str(RATINGS), "--format", "csv", "--map", ML_MAP, "--limit", "500", "--max-speed"])
        == 0
    )
    assert "replayed 500 events" in capsys.readouterr().out

    with RATINGS.open() as fh:
        rows = [row for _, row in zip(range(500), csv.DictReader(fh), strict=False)]
    got = read_topic(settings, settings.topic_events, expect=500)
    assert len(got) == 500
    by_key: dict[bytes, list[dict]] = {}
    for msg in got:
        by_key.setdefault(msg.key(), []).append(json.loads(msg.value()))
    first = by_key[rows[0]["userId"].encode()][0]
    assert first == {
        "user_id": rows[0]["userId"], "item_id": rows[0]["movieId"], "type": "rate",
        "ts": int(rows[0]["timestamp"]) * 1000, "value": float(rows[0]["rating"]),
    }  # fmt: skip
    # one user's events stay in one partition, in file order
    for msg_list in by_key.values():
        assert len({json.dumps(m["user_id"]) for m in msg_list}) == 1


def test_replay_rate_limit_and_unmappable_rows(settings, monkeypatch, tmp_path, capsys):
    _env(monkeypatch, settings)
    data = tmp_path / "events.csv"
    data.write_text(
        "userId,movieId,timestamp,rating\n1,10,964982703,4.0\n2,,964982224,3.5\n3,30,964983815,5.0\n"
    )
    assert main(["replay", str(data), "--map", ML_MAP, "--rate", "50"]) == 0
    sent = read_topic(settings, settings.topic_events, expect=3, timeout_s=60)
    assert len(sent) == 3
    # the row with an empty movieId goes through as-is: the worker's decoder is the judge
    empty = next(m for m in sent if json.loads(m.value())["item_id"] == "")
    with pytest.raises(DecodeError, match="field 'item_id' = ''"):
        decode_event(empty.value(), Coordinates(settings.topic_events, empty.partition(), empty.offset()))

    broken = tmp_path / "events.jsonl"
    broken.write_text('{"userId": 1, "movieId": 2, "timestamp": 964982703, "rating": 4}\n{"movieId": 3}\n')
    assert main(["replay", str(broken), "--map", ML_MAP]) == 1
    captured = capsys.readouterr()
    assert "row 2" in captured.err and "userId" in captured.err
    assert "1 rows could not be mapped" in captured.out
