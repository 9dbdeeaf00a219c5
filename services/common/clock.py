"""Protobuf timestamps from datetimes and of the current time."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2


def to_timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(dt.UTC))
    return ts


def now_timestamp() -> timestamp_pb2.Timestamp:
    return to_timestamp(dt.datetime.now(dt.UTC))
