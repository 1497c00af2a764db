"""The demo's synthetic selfies: the photo check sees what their kind says, and different seeds
make selfies that are not "the same photo" to the reuse check."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from demo.selfies import DEMO_SIDE_PX, DistinctSelfies, compose, prepare, selfie
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


def test_the_demos_selfies_are_made_once_kept_on_disk_and_distinct(tmp_path: Path) -> None:
    wanted = [("one_face", 1), ("no_face", 2), ("one_face", 4), ("two_faces", 3)]
    made = prepare(wanted, tmp_path, workers=2)
    analyses = [analyse(photo, LIMITS) for photo in made]
    assert [a.outcome for a in analyses] == ["ok", "no_face", "ok", "multiple_faces"]
    assert {a.width for a in analyses} == {DEMO_SIDE_PX}
    folder = tmp_path / f"{DEMO_SIDE_PX}px"
    assert len(list(folder.iterdir())) == 4  # one file per person
    # Read back, not made again: the same bytes, even when a cached file is all there is.
    assert prepare(wanted, tmp_path, workers=2) == made
    (no_face,) = folder.glob("no_face-2-*.jpg")
    no_face.unlink()
    assert prepare(wanted, tmp_path, workers=1) == made


def test_a_selfie_too_close_to_an_earlier_one_is_made_again(tmp_path: Path) -> None:
    wanted = [("one_face", 1), ("one_face", 4)]
    first, _ = prepare(wanted, tmp_path, workers=1)
    # As if person 4's selfie had come out as the same photo as person 1's.
    folder = tmp_path / f"{DEMO_SIDE_PX}px"
    (one,) = folder.glob("one_face-1-*.jpg")
    for path in folder.glob("one_face-4-*.jpg"):
        path.unlink()
    (folder / one.name.replace("one_face-1-", "one_face-4-")).write_bytes(one.read_bytes())
    again = prepare(wanted, tmp_path, workers=1)
    assert again[0] == first
    a, b = (analyse(photo, LIMITS) for photo in again)
    assert a.phash is not None
    assert b.phash is not None
    assert b.outcome == "ok"
    assert hamming(a.phash, b.phash) > SAME_PHOTO_MAX_DISTANCE
    # The replacement is what is kept.
    assert prepare(wanted, tmp_path, workers=1) == again
