"""Registration ids: UUIDv7, unique, time-ordered, never shared with a forked process."""

from __future__ import annotations

import os
import time

from core import ids


def test_uuid7_is_version_7_time_ordered_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    made = [ids.uuid7() for _ in range(5_000)]  # several refills of the random pool
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in made)
    assert len(set(made)) == len(made)
    millis = [u.int >> 80 for u in made]
    assert millis == sorted(millis)
    assert before <= millis[0] <= millis[-1] <= time.time_ns() // 1_000_000


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    ids.uuid7()  # the pool holds bytes the child would otherwise share
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id's random bits, to the parent
        os.write(write, ids.uuid7().bytes)
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    parent = ids.uuid7().bytes
    # The 74 random bits (after the 48-bit time and the version) differ.
    assert (int.from_bytes(child, "big") & ((1 << 74) - 1)) != (
        int.from_bytes(parent, "big") & ((1 << 74) - 1)
    )
