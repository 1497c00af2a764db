"""Multi-index hashing for the reused-selfie search: which stored perceptual hashes may lie
within ``max_distance`` bits of a new one, found by equality on indexed chunks of the hash
instead of measuring the distance to every stored photo.

The 64 bits are cut into the disjoint chunks of :data:`CHUNKS`, the expressions migration
0007 indexes. Give chunk *i* a radius *r_i* such that the *r_i + 1* add up to *d + 1*
(:func:`radii`). Two hashes within *d* bits then differ in at most *r_i* bits of some chunk
*i*: were every chunk *i* to differ in *r_i + 1* bits or more, the hashes would differ in
*d + 1* or more (the pigeonhole principle). So each hash within *d* of ``x`` has, in some chunk,
one of the values :func:`probes` lists for ``x``: the chunk of ``x`` with at most *r_i* of its
bits flipped. The query looks those values up by equality, one index per chunk, and keeps the
rows within *d* by the exact distance. It finds exactly what a scan with the exact distance
finds (``tests/verifiers/test_phash_search.py`` runs both).

Why four chunks of 16 bits and not the textbook *d + 1* chunks with radius 0: with
:data:`~verifiers.imaging.SAME_PHOTO_MAX_DISTANCE` at 10, eleven chunks are 5 or 6 bits wide;
each value is shared by a 32nd to a 64th of all photos, and the eleven look-ups would read
about a sixth of the table, no better than the scan. With 16-bit chunks and radii (2, 2, 2, 1)
there are 428 probe values, each shared by one photo in 65,536. Fewer, wider chunks mean
fewer entries read per probe value but many more probe values (three chunks of 21 and 22 bits:
about 3,400): ``benchmarks/README.md`` has the measurements behind the choice.
"""

from __future__ import annotations

import functools
import itertools
from typing import Final

# (width in bits, shift) of each chunk, from the most significant bits down; chunk i of a hash
# h is (h >> shift) & (2**width - 1), on the signed bigint as on the unsigned value (the bits
# kept are the same). Migration 0007's indexes and verifiers/photo.py's query spell them out.
CHUNKS: Final[tuple[tuple[int, int], ...]] = ((16, 48), (16, 32), (16, 16), (16, 0))
_BITS: Final = 64


def radii(max_distance: int, chunks: int = len(CHUNKS)) -> tuple[int, ...]:
    """The radius of each chunk: the *r_i + 1* add up to ``max_distance + 1``, shared as evenly
    as they go (the first chunks take the remainder). A radius of -1 means the chunk need not
    be looked at (when ``max_distance + 1`` is smaller than the number of chunks)."""
    if max_distance < 0:
        raise ValueError("max_distance must not be negative")
    share, remainder = divmod(max_distance + 1, chunks)
    return tuple(share - 1 + (1 if i < remainder else 0) for i in range(chunks))


@functools.cache
def _flips(width: int, radius: int) -> tuple[int, ...]:
    """Every ``width``-bit mask with at most ``radius`` bits set, 0 first."""
    return tuple(
        sum(1 << bit for bit in bits)
        for count in range(radius + 1)
        for bits in itertools.combinations(range(width), count)
    )


def probes(phash: int, max_distance: int) -> list[list[int]]:
    """For each chunk of :data:`CHUNKS`, the values a stored hash within ``max_distance`` bits of
    ``phash`` (a signed or unsigned 64-bit integer) may have there; see the module's docstring.
    A stored hash within the distance has its chunk's value in at least one of the lists."""
    unsigned = phash & ((1 << _BITS) - 1)
    found = []
    for (width, shift), radius in zip(CHUNKS, radii(max_distance), strict=True):
        chunk = (unsigned >> shift) & ((1 << width) - 1)
        found.append([chunk ^ flip for flip in _flips(width, radius)])
    return found
