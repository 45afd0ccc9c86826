"""A stored record verifies its own content hash: hand edits and damage are detected on read."""

import json
from pathlib import Path

import pytest
from test_leaderboard import make_record  # the leaderboard tests' record builder

from leaderboard.record import Record, RecordError
from leaderboard.store import LocalStore


def test_integrity_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    rec = make_record()
    path = LocalStore(tmp_path).add(rec)
    d = json.loads(path.read_text())
    assert d["integrity"]["sha256"] == rec.content_sha256()
    assert Record.from_json(d).content_sha256() == rec.content_sha256()
    d["score"]["mean"] += 0.01  # a "small correction" by hand
    path.write_text(json.dumps(d))
    with pytest.raises(RecordError, match="integrity check failed"):
        LocalStore.read(path)
