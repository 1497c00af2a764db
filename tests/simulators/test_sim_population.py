"""The synthetic population's ground truth: its proportions, its determinism, and the ministry
records derived from it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import pytest

from intake.validation import ValidationFailed, validate
from simulators.population import (
    INVALID_KINDS,
    Proportions,
    Registrant,
    Registry,
    Truth,
    dukcapil_record,
    population,
)
from tests.simulators.sim_support import TODAY

LARGE = 20_000
TOLERANCE = 0.015  # each share within ±1.5 percentage points


@pytest.fixture(scope="module")
def large() -> list[Registrant]:
    return population(LARGE, seed=7, today=TODAY)


def test_truth_shares_are_the_configured_proportions(large: list[Registrant]) -> None:
    valid = [p for p in large if p.kind == "valid"]
    expected = Proportions()
    dukcapil = Counter(p.truth.dukcapil for p in valid)
    photo = Counter(p.truth.photo for p in valid)
    measured = {
        "not_found": dukcapil["not_found"] / len(valid),
        "mismatch_full_name": dukcapil["mismatch_full_name"] / len(valid),
        "mismatch_birth_place": dukcapil["mismatch_birth_place"] / len(valid),
        "mismatch_birth_date": dukcapil["mismatch_birth_date"] / len(valid),
        "student": sum(p.truth.student for p in valid) / len(valid),
        "welfare": sum(p.truth.welfare for p in valid) / len(valid),
        "clicks_email_link": sum(p.truth.clicks_email_link for p in valid) / len(valid),
        "enters_otp": sum(p.truth.enters_otp for p in valid) / len(valid),
        "photo_no_face": photo["no_face"] / len(valid),
        "photo_two_faces": photo["two_faces"] / len(valid),
    }
    for name, share in measured.items():
        assert share == pytest.approx(getattr(expected, name), abs=TOLERANCE), name


def test_kind_shares_are_unchanged(large: list[Registrant]) -> None:
    kinds = Counter(p.kind for p in large)
    assert kinds["duplicate"] / LARGE == pytest.approx(0.05, abs=TOLERANCE)
    invalid = sum(kinds[k] for k in INVALID_KINDS)
    assert invalid / LARGE == pytest.approx(0.10, abs=TOLERANCE)


def test_other_proportions_are_honoured() -> None:
    proportions = Proportions(not_found=0.5, student=0.0, welfare=1.0, photo_two_faces=0.3)
    people = population(LARGE, seed=3, today=TODAY, proportions=proportions)
    valid = [p for p in people if p.kind == "valid"]
    not_found = sum(p.truth.dukcapil == "not_found" for p in valid) / len(valid)
    two_faces = sum(p.truth.photo == "two_faces" for p in valid) / len(valid)
    assert not_found == pytest.approx(0.5, abs=TOLERANCE)
    assert two_faces == pytest.approx(0.3, abs=TOLERANCE)
    assert not any(p.truth.student for p in valid)
    assert all(p.truth.welfare for p in valid)


def test_impossible_proportions_are_refused() -> None:
    with pytest.raises(ValueError, match="student"):
        Proportions(student=1.5)
    with pytest.raises(ValueError, match="Dukcapil"):
        Proportions(not_found=0.5, mismatch_full_name=0.6)


def test_deterministic_for_a_seed_and_independent_of_the_count() -> None:
    first = population(2_000, seed=11, today=TODAY)
    assert first == population(2_000, seed=11, today=TODAY)
    assert first[:500] == population(500, seed=11, today=TODAY)
    other = population(2_000, seed=12, today=TODAY)
    assert [p.truth for p in first] != [p.truth for p in other]


def test_a_duplicate_shares_its_originals_truth(large: list[Registrant]) -> None:
    by_nik = {p.form["nik"]: p for p in large if p.kind == "valid"}
    duplicates = [p for p in large if p.kind == "duplicate"]
    assert duplicates
    for duplicate in duplicates:
        assert duplicate.truth == by_nik[duplicate.form["nik"]].truth
    # Each names the earlier, valid registration it repeats; nobody else names one.
    for index, registrant in enumerate(large):
        if registrant.kind != "duplicate":
            assert registrant.repeats is None
            continue
        assert registrant.repeats is not None
        assert registrant.repeats < index
        original = large[registrant.repeats]
        assert original.kind == "valid"
        assert original.form["nik"] == registrant.form["nik"]


def test_a_record_differs_from_the_form_exactly_where_the_truth_says(
    large: list[Registrant],
) -> None:
    seen = Counter[str]()
    for person in large:
        if person.kind != "valid":
            continue
        seen[person.truth.dukcapil] += 1
        if person.truth.dukcapil == "not_found":
            with pytest.raises(LookupError):
                dukcapil_record(person)
            continue
        record = dukcapil_record(person)
        differs = {k for k, v in record.items() if person.form[k].casefold() != v.casefold()}
        expected = set() if person.truth.dukcapil == "match" else {person.truth.dukcapil[9:]}
        assert differs == expected, person.truth.dukcapil
    assert len(seen) == 5


def test_a_birth_date_mismatch_keeps_the_form_acceptable(large: list[Registrant]) -> None:
    """The form's birth date still agrees with its NIK (the edge accepts it); Dukcapil's
    record is a year off."""
    mismatched = [
        p for p in large if p.kind == "valid" and p.truth.dukcapil == "mismatch_birth_date"
    ]
    assert mismatched
    for person in mismatched:
        validate(person.form, TODAY)  # raises if the edge would refuse it
        form_date = dt.date.fromisoformat(person.form["birth_date"])
        record_date = dt.date.fromisoformat(dukcapil_record(person)["birth_date"])
        assert abs(record_date.year - form_date.year) == 1


def test_mismatch_forms_pass_the_edge_and_invalid_ones_do_not(large: list[Registrant]) -> None:
    for person in large[:3_000]:
        if person.kind in INVALID_KINDS:
            with pytest.raises(ValidationFailed):
                validate(person.form, TODAY)
        else:
            validate(person.form, TODAY)


def test_the_registry_holds_who_the_truth_says(large: list[Registrant]) -> None:
    registry = Registry.from_population(large)
    for person in large:
        nik = person.form["nik"]
        record = registry.record(nik)
        if person.truth.dukcapil == "not_found":
            assert record is None
        else:
            assert record == dukcapil_record(person)
        assert registry.is_student(nik) is person.truth.student
        assert registry.is_welfare(nik) is person.truth.welfare
    assert registry.record("3171011705900000") is None


def test_invalid_forms_have_a_consistent_truth(large: list[Registrant]) -> None:
    for person in large:
        if person.kind == "bad_nik_serial":
            assert person.truth.dukcapil == "not_found"
        elif person.kind == "nik_mismatch":
            # Dukcapil holds the birth date the NIK encodes, not the form's.
            record = dukcapil_record(person)
            nik = person.form["nik"]
            born = dt.date.fromisoformat(record["birth_date"])
            assert (int(nik[6:8]) % 40, int(nik[8:10]), int(nik[10:12])) == (
                born.day,
                born.month,
                born.year % 100,
            )


def test_registrant_keeps_its_old_constructor() -> None:
    registrant = Registrant({"nik": "x"}, "valid")
    assert registrant.truth == Truth()
    assert dataclasses.replace(registrant, kind="duplicate").truth == Truth()
