"""The simulators' message feed: numbered from 1, paged, bounded (the oldest go first)."""

from __future__ import annotations

from simulators.feed import Feed, parse_after


def test_pages_follow_on_and_old_messages_are_forgotten() -> None:
    feed = Feed(size=3)
    for text in "abcde":
        feed.append({"text": text})
    # a and b are gone; a reader behind them gets what is left, from the oldest kept.
    page, last = feed.after(0, limit=2)
    assert ([m["text"] for m in page], [m["seq"] for m in page], last) == (["c", "d"], [3, 4], 4)
    page, last = feed.after(last)
    assert ([m["text"] for m in page], last) == (["e"], 5)
    assert feed.after(5) == ([], 5)
    assert Feed().after(0) == ([], 0)


def test_the_query_needs_a_whole_after_and_caps_the_limit() -> None:
    assert parse_after({"after": "7"}) == (7, 5000)
    assert parse_after({"after": "7", "limit": "99999"}) == (7, 5000)
    assert parse_after({"after": "0", "limit": "10"}) == (0, 10)
    for bad in ({}, {"after": "x"}, {"after": "-1"}, {"after": "1", "limit": "0"}):
        assert parse_after(bad) is None
