"""The benchmark commands still run and print their numbers (tiny sizes; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from streams.cli import main

pytestmark = pytest.mark.stack


def test_bench_profiles_prints_a_table_and_writes_json(settings, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FRESHREC_REDIS_URL", settings.redis_url)
    out = tmp_path / "profiles.json"
    assert (
        main(
            ["bench", "profiles", "--users", "200", "--items", "100", "--events", "3000", "--json", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "events/s (profile path)" in printed and "Redis bytes / user profile" in printed
    result = json.loads(out.read_text())
    assert result["events"] == 3000
    for key in ("events_per_s", "redis_round_trips_per_batch", "redis_bytes_per_user"):
        assert result[key] > 0
    assert result["redis_round_trips_per_batch"] <= 3  # one read for cache misses, one atomic write
