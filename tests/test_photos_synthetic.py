"""The demo's synthetic selfies: the photo check sees what their kind says, and different seeds
make selfies that are not "the same photo" to the reuse check."""

from __future__ import annotations

import itertools

import pytest

from demo.selfies import DistinctSelfies, compose, selfie
from verifiers.imaging import SAME_PHOTO_MAX_DISTANCE, PhotoLimits, analyse, hamming

LIMITS = PhotoLimits()
ONE_FACE_SEEDS = range(40)
OTHER_SEEDS = range(10)


def test_the_same_seed_makes_the_same_bytes() -> None:
    assert selfie("one_face", 7) == selfie("one_face", 7)
    assert selfie("one_face", 7) != selfie("one_face", 8)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown selfie kind"):
        selfie("three_faces", 0)


def test_one_face_selfies_pass_and_are_all_distinct() -> None:
    hashes, recomposed = [], 0
    for seed in ONE_FACE_SEEDS:
        photo = selfie("one_face", seed)
        recomposed += photo != compose("one_face", seed)
        analysis = analyse(photo, LIMITS)
        assert (analysis.outcome, analysis.faces) == ("ok", 1), seed
        assert analysis.phash is not None
        hashes.append(analysis.phash)
    nearest = min(hamming(a, b) for a, b in itertools.combinations(hashes, 2))
    print(f"nearest pair of {len(hashes)} one-face selfies: {nearest} bits apart")
    print(f"first composition fooled the detector for {recomposed} of them")
    assert recomposed <= len(hashes) // 10
    assert nearest > SAME_PHOTO_MAX_DISTANCE


@pytest.mark.parametrize(
    ("kind", "outcome"), [("two_faces", "multiple_faces"), ("no_face", "no_face")]
)
def test_other_kinds_are_rejected_for_what_they_show(kind: str, outcome: str) -> None:
    for seed in OTHER_SEEDS:
        assert analyse(selfie(kind, seed), LIMITS).outcome == outcome, seed


def test_distinct_selfies_never_repeat_a_photo_the_check_would_call_reused() -> None:
    selfies = DistinctSelfies()
    first = selfies.make("one_face", 7)
    assert first == selfie("one_face", 7)
    # The same seed again: its first composition is the same photo, so the next one is taken.
    again = selfies.make("one_face", 7)
    assert again != first
    a, b = analyse(first, LIMITS), analyse(again, LIMITS)
    assert b.outcome == "ok"
    assert a.phash is not None
    assert b.phash is not None
    assert hamming(a.phash, b.phash) > SAME_PHOTO_MAX_DISTANCE
