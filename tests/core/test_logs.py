"""JSON log lines: the timestamp as datetime writes it, and the buffered handler of a busy
logger writes every line, in order, within its interval or when its buffer fills."""

from __future__ import annotations

import datetime as dt
import io
import logging

from hypothesis import given
from hypothesis import strategies as st

from core.logs import BufferedLines, JsonFormatter
from tests.support.waiting import eventually


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_timestamp_is_utc_iso_8601_to_the_microsecond(created: float) -> None:
    formatter = JsonFormatter("test")
    written = dt.datetime.fromisoformat(formatter._timestamp(created))
    assert written.utcoffset() == dt.timedelta(0)
    assert abs(written.timestamp() - created) < 2e-6  # datetime rounds, the line truncates


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, "", 0, "line %d", (i,), None)


class _Slow(BufferedLines):
    FLUSH_INTERVAL_S = 3600.0  # the flusher thread never comes in this test


def test_buffered_lines_wait_for_a_flush_or_a_full_buffer() -> None:
    stream = io.StringIO()
    handler = _Slow(stream)
    handler.setFormatter(JsonFormatter("test"))
    for i in range(3):
        handler.handle(_record(i))
    assert stream.getvalue() == ""
    handler.flush()
    assert [line.count('"msg":"line ') for line in stream.getvalue().splitlines()] == [1, 1, 1]
    assert '"msg":"line 2"' in stream.getvalue().splitlines()[2]
    # A full buffer is written at once, in order.
    stream.seek(0)
    stream.truncate()
    count = BufferedLines.BUFFER_BYTES // 80 + 1
    for i in range(count):
        handler.handle(_record(i))
    written = stream.getvalue().splitlines()
    assert len(written) >= BufferedLines.BUFFER_BYTES // 200
    assert [f'"msg":"line {i}"' in line for i, line in enumerate(written)] == [True] * len(written)
    handler.close()


async def test_buffered_lines_are_written_within_the_interval() -> None:
    class Quick(BufferedLines):
        FLUSH_INTERVAL_S = 0.05

    stream = io.StringIO()
    handler = Quick(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.handle(_record(7))
    await eventually(lambda: _value(stream), lambda text: '"msg":"line 7"' in text, 10)
    handler.close()


async def _value(stream: io.StringIO) -> str:
    return stream.getvalue()


def test_the_access_log_writes_the_line_a_record_would_give() -> None:
    import orjson

    from intake.accesslog import AccessLogger

    stream = io.StringIO()
    handler = _Slow(stream)
    handler.setFormatter(JsonFormatter("edge"))
    logger = logging.getLogger("test.access.buffered")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    AccessLogger(logger, "").answered("POST", "/v1/registrations", 202, 0.0123456789)
    # The same through a record, as when the logger is not buffered.
    plain = io.StringIO()
    through_record = logging.StreamHandler(plain)
    through_record.setFormatter(JsonFormatter("edge"))
    logger.handlers[:] = [through_record]
    logger.propagate = False
    AccessLogger(logger, "").answered("POST", "/v1/registrations", 202, 0.0123456789)
    logger.setLevel(logging.WARNING)  # and nothing when INFO is off
    AccessLogger(logger, "").answered("POST", "/v1/registrations", 202, 0.5)
    handler.flush()
    fast, slow = orjson.loads(stream.getvalue()), orjson.loads(plain.getvalue())
    assert fast.pop("ts")[:10] == slow.pop("ts")[:10]
    assert (
        fast
        == slow
        == {
            "level": "info",
            "role": "edge",
            "logger": "test.access.buffered",
            "msg": "POST /v1/registrations 202",
            "status": 202,
            "duration_s": 0.012346,
        }
    )
    handler.close()
