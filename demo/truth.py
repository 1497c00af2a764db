"""What the funnel must show once the wave is decided, from the synthetic population's truth,
and the funnel as stored, counted the same way; and, in words, why the people who are not
verified are not.

A valid registrant is rejected when Dukcapil does not confirm their NIK (not found, or another
name, place or date of birth), when Dapodik lists them as in education, or when their selfie
shows no face or several; with two causes, by whichever check fails first, which depends on
timing: either reason is right (a "rejected:a or b" stage). A person's upload is refused
(``409 registration-closed``) when a check rejected them first, so whether their photo is
checked at all depends on timing too: the upload's answer decides for them.
"""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import Sequence

from demo.funnel import Funnel
from demo.registrants import Person
from simulators.population import INVALID_KINDS, Registrant

_NIK_REASONS = {
    "not_found": "nik_not_found",
    "mismatch_full_name": "nik_data_mismatch",
    "mismatch_birth_place": "nik_data_mismatch",
    "mismatch_birth_date": "nik_data_mismatch",
}
_PHOTO_REASONS = {"no_face": "photo_no_face", "two_faces": "photo_multiple_faces"}
Decisions = dict[uuid.UUID, tuple[str, str | None, dt.datetime | None]]


def causes(person: Person) -> frozenset[str]:
    """The reasons a valid registration can be rejected for, from its truth: the NIK lanes' and,
    if its selfie was accepted, the photo lane's."""
    truth, found = person.registrant.truth, set()
    if truth.dukcapil in _NIK_REASONS:
        found.add(_NIK_REASONS[truth.dukcapil])
    elif truth.student:
        found.add("in_education")
    if person.photo_accepted and truth.photo in _PHOTO_REASONS:
        found.add(_PHOTO_REASONS[truth.photo])
    return frozenset(found)


def _stage(reasons: frozenset[str]) -> str:
    return "rejected:" + " or ".join(sorted(reasons))


def _accepted_valid(people: Sequence[Person]) -> list[Person]:
    return [p for p in people if p.status == 202 and p.registrant.kind == "valid"]


def _verifiable(registrant: Registrant) -> bool:
    truth = registrant.truth
    return truth.dukcapil == "match" and not truth.student and truth.photo == "one_face"


def expected_funnel(people: Sequence[Person]) -> dict[str, int]:
    """Each stage's count once everything is decided, from the truth of the people the edge
    accepted (everyone with a valid form is, in the end)."""
    valid = _accepted_valid(people)
    duplicates = sum(1 for p in people if p.status == 202 and p.registrant.kind == "duplicate")
    expected = {
        "registered": len(valid) + duplicates,
        "ministries_passed": sum(
            1
            for p in valid
            if p.registrant.truth.dukcapil == "match" and not p.registrant.truth.student
        ),
        "rejected:duplicate_nik": duplicates,
    }
    rejected = collections.Counter(_stage(c) for p in valid if (c := causes(p)))
    rejected.update({"rejected:photo_no_face": 0, "rejected:photo_multiple_faces": 0})
    expected.update(rejected)
    expected["rejected"] = duplicates + sum(rejected.values())
    expected["email_verified"] = sum(1 for p in valid if p.registrant.truth.clicks_email_link)
    expected["phone_verified"] = sum(1 for p in valid if p.registrant.truth.enters_otp)
    expected["photo_verified"] = sum(
        1
        for p in valid
        if p.registrant.truth.photo == "one_face" and (p.photo_accepted or not causes(p))
    )
    expected["verified"] = sum(
        1
        for p in valid
        if _verifiable(p.registrant)
        and p.registrant.truth.clicks_email_link
        and p.registrant.truth.enters_otp
    )
    expected["open"] = len(open_people(people))
    return expected


def open_people(people: Sequence[Person]) -> list[Person]:
    """Who stays undecided: nothing rejects them, and they never follow their link or never
    type their code (a check waits for the person, for as long as the link lives)."""
    return [
        p
        for p in _accepted_valid(people)
        if not causes(p)
        and not (p.registrant.truth.clicks_email_link and p.registrant.truth.enters_otp)
    ]


def observed_funnel(f: Funnel, people: Sequence[Person], decisions: Decisions) -> dict[str, int]:
    """The funnel as stored; the rejections counted per person, by the stage
    :func:`expected_funnel` puts them in (a rejection for a reason that is not among the
    person's causes is counted under the reason itself, where nothing is expected)."""
    observed = {
        "registered": f.registered,
        "ministries_passed": f.ministries_passed,
        "email_verified": f.email_verified,
        "phone_verified": f.phone_verified,
        "photo_verified": f.photo_verified,
        "verified": f.verified,
        "rejected": f.rejected,
        "open": f.open,
    }
    per_person: collections.Counter[str] = collections.Counter()
    for p in people:
        if p.id is None:
            continue
        status, reason, _ = decisions.get(p.id, ("received", None, None))
        if status != "rejected" or reason is None:
            continue
        expected = frozenset({"duplicate_nik"}) if p.registrant.kind == "duplicate" else causes(p)
        per_person[_stage(expected if reason in expected else frozenset({reason}))] += 1
    observed.update(per_person)
    return observed


def explanations(people: Sequence[Person]) -> list[str]:
    """Why the answers that are not a plain success are what they should be, in words."""
    lines = []
    invalid = [p for p in people if p.registrant.kind in INVALID_KINDS]
    refused = sum(1 for p in invalid if p.status is not None and 400 <= p.status < 500)
    lines.append(
        f"refused at the edge: {refused} of the population's {len(invalid)} invalid forms (a"
        " wrong NIK, phone, email or date of birth, a missing field: each answered 422 with"
        " the field and its error)"
    )
    duplicates = sum(1 for p in people if p.registrant.kind == "duplicate")
    lines.append(
        f"rejected:duplicate_nik: {duplicates} people registered a second time with the same"
        " NIK: accepted, then rejected as they were stored (one registration per NIK)"
    )
    closed = sum(1 for p in people if p.photo == "photo uploaded: 409 registration-closed")
    if closed:
        lines.append(
            f"photo uploaded: 409 registration-closed: {closed} selfies came after a NIK check"
            " had already rejected their registration (expected: nothing more is checked)"
        )
    waiting = open_people(people)
    no_link = sum(1 for p in waiting if not p.registrant.truth.clicks_email_link)
    no_code = sum(1 for p in waiting if not p.registrant.truth.enters_otp)
    both = sum(
        1
        for p in waiting
        if not p.registrant.truth.clicks_email_link and not p.registrant.truth.enters_otp
    )
    lines.append(
        f"open: {len(waiting)} registrations wait for their person, as the truth says:"
        f" {no_link} never follow their email link, {no_code} never type their SMS code"
        f" ({both} neither); a registration stays open while its link is valid"
    )
    expired = sum(1 for p in people if "expired)" in p.otp)
    if expired:
        lines.append(f"{expired} people typed an expired code, asked for a new one and typed that")
    return lines


def differences(expected: dict[str, int], observed: dict[str, int]) -> list[str]:
    """The stages whose counts differ (a stage missing on one side counts 0 there)."""
    stages = sorted({*expected, *observed}, key=lambda s: (s.startswith("rejected:"), s))
    return [s for s in stages if expected.get(s, 0) != observed.get(s, 0)]
