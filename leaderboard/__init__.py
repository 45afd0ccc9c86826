"""Leaderboard: typed result records, the local store (one file per submission), ranked tables."""

from leaderboard.record import SCHEMA_VERSION, Record, RecordError
from leaderboard.store import LocalStore, StoreError
from leaderboard.table import ranked_table

__all__ = ["SCHEMA_VERSION", "LocalStore", "Record", "RecordError", "StoreError", "ranked_table"]
