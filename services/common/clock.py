"""Protobuf timestamps of the current time."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC))
    return ts
