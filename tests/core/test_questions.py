"""The question bank: the bundled one is complete and bilingual; a bad bank is refused whole;
draws and scores."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from core import questions
from core.questions import BankError


def test_the_bundled_bank_is_complete_and_bilingual() -> None:
    bank = questions.load()
    assert len(bank) >= 60
    prefixes = {qid.split("-")[0] for qid in bank.ids()}
    assert prefixes == {"num", "read", "reas", "dig"}  # numeracy, reading, reasoning, digital
    for qid in bank.ids():
        question = bank.question(qid)
        assert set(question.text) == {"id", "en"}
        assert len(question.options) == questions.OPTIONS
        assert len({o["id"] for o in question.options}) == questions.OPTIONS, qid
        assert "answer" not in question.public()


def test_a_draw_is_distinct_questions_and_the_score_is_rounded_percent() -> None:
    bank = questions.load()
    asked = bank.draw(19, random.Random(7))
    assert len(set(asked)) == 19
    right = {qid: bank.question(qid).answer for qid in asked}
    assert bank.score(asked, right) == (19, 100)
    assert bank.score(asked, {}) == (0, 0)
    ten = dict(list(right.items())[:10])
    assert bank.score(asked, ten) == (10, 53)
    wrong = {qid: (index + 1) % 4 for qid, index in right.items()}
    assert bank.score(asked, wrong) == (0, 0)
    with pytest.raises(BankError):
        bank.draw(len(bank) + 1)


def _bank(tmp_path: Path, items: object) -> str:
    path = tmp_path / "bank.json"
    path.write_bytes(orjson.dumps({"questions": items}))
    return str(path)


OPTIONS = [{"id": str(n), "en": str(n)} for n in range(4)]
GOOD = {
    "id": "q1",
    "text": {"id": "Satu tambah satu?", "en": "One plus one?"},
    "options": OPTIONS,
    "answer": 2,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": 4}, "answer"),
        ({"answer": True}, "answer"),
        ({"options": OPTIONS[:3]}, "4 options"),
        ({"text": {"id": "Satu?"}}, "texts"),
        ({"text": {"id": "Satu?", "en": ""}}, "texts"),
        ({"id": ""}, "id"),
        ({"hint": "two"}, "unknown"),
    ],
)
def test_a_bad_question_refuses_the_whole_bank(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    assert len(questions.load(_bank(tmp_path, [GOOD]))) == 1
    with pytest.raises(BankError, match=message):
        questions.load(_bank(tmp_path, [{**GOOD, "id": "q0"}, {**GOOD, **change}]))


def test_duplicate_ids_missing_files_and_bad_json_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="unique"):
        questions.load(_bank(tmp_path, [GOOD, GOOD]))
    with pytest.raises(BankError, match="cannot read"):
        questions.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BankError, match="JSON"):
        questions.load(str(tmp_path / "bad.json"))
