"""The intake test's question bank: loaded and checked once, drawn from, and scored.

A registrant takes a short aptitude test (numeracy, reading, reasoning, basic digital literacy)
before joining a wave. The bank is a JSON document (the bundled ``core/data/questions.json``,
or the file ``INTAKE_TEST_BANK`` names): ``{"questions": [{"id", "text": {"id", "en"},
"options": [{"id", "en"} x 4], "answer": <index>}, ...]}``, the text in Bahasa Indonesia and
English. It is checked whole when loaded (a bank with one bad question is refused, never
half used), so that a draw or a score never meets a malformed question.

The right answers stay here: :meth:`Question.public` is what a registrant is shown, and the
edge stores only the drawn ids; the participation worker scores with the same bank. A bank may
grow, and a question may be reworded, but an id is never reused for another question: an
attempt served with it is scored by it.
"""

from __future__ import annotations

import importlib.resources
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

OPTIONS = 4
LANGUAGES = ("id", "en")
_MAX_ID_CHARS = 64


class BankError(ValueError):
    """A question bank that cannot be used (the message says which question and why)."""


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    text: dict[str, str]
    options: tuple[dict[str, str], ...]
    answer: int

    def public(self) -> dict[str, Any]:
        """What the registrant sees: no right answer."""
        return {"id": self.id, "text": self.text, "options": list(self.options)}


def _texts(where: str, value: Any) -> dict[str, str]:
    if (
        not isinstance(value, dict)
        or set(value) != set(LANGUAGES)
        or not all(isinstance(t, str) and t.strip() for t in value.values())
    ):
        raise BankError(f"{where}: needs non-empty texts in exactly {', '.join(LANGUAGES)}")
    return {language: value[language] for language in LANGUAGES}


def _question(index: int, obj: Any) -> Question:
    if not isinstance(obj, dict):
        raise BankError(f"question {index}: not an object")
    qid = obj.get("id")
    if not isinstance(qid, str) or not 0 < len(qid) <= _MAX_ID_CHARS:
        raise BankError(f"question {index}: the id is a string of 1-{_MAX_ID_CHARS} characters")
    unknown = set(obj) - {"id", "text", "options", "answer"}
    if unknown:
        raise BankError(f"question {qid}: unknown fields {sorted(unknown)}")
    text = _texts(f"question {qid} text", obj.get("text"))
    options = obj.get("options")
    if not isinstance(options, list) or len(options) != OPTIONS:
        raise BankError(f"question {qid}: needs exactly {OPTIONS} options")
    choices = tuple(_texts(f"question {qid} option {i}", o) for i, o in enumerate(options))
    answer = obj.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < OPTIONS:
        raise BankError(f"question {qid}: the answer is an option index, 0-{OPTIONS - 1}")
    return Question(qid, text, choices, answer)


class Bank:
    """A checked question bank."""

    def __init__(self, questions: Sequence[Question]) -> None:
        self._questions = {q.id: q for q in questions}
        if len(self._questions) != len(questions):
            raise BankError("question ids must be unique")

    @classmethod
    def from_json(cls, raw: bytes) -> Bank:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BankError("the bank is not valid JSON") from None
        items = document.get("questions") if isinstance(document, dict) else None
        if not isinstance(items, list) or not items:
            raise BankError('the bank is {"questions": [...]} with at least one question')
        return cls([_question(i, obj) for i, obj in enumerate(items)])

    def __len__(self) -> int:
        return len(self._questions)

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._questions

    def ids(self) -> list[str]:
        return sorted(self._questions)

    def question(self, question_id: str) -> Question:
        return self._questions[question_id]

    def draw(self, count: int, rng: random.Random | None = None) -> list[str]:
        """``count`` different question ids, in a random order."""
        if not 0 < count <= len(self._questions):
            raise BankError(f"cannot draw {count} of {len(self._questions)} questions")
        chooser = rng if rng is not None else random.SystemRandom()
        return chooser.sample(self.ids(), count)

    def score(self, asked: Sequence[str], answers: Mapping[str, int]) -> tuple[int, int]:
        """(right answers, score 0-100) of ``answers`` to the questions ``asked``: score =
        round(100 x right / asked). An unanswered question, or one answered that was not
        asked, counts nothing; a question no longer in the bank counts as wrong."""
        correct = sum(
            1
            for qid in asked
            if qid in self._questions and answers.get(qid) == self._questions[qid].answer
        )
        return correct, round(100 * correct / len(asked)) if asked else 0


def load(path: str = "") -> Bank:
    """The bank at ``path``, or the bundled one when empty; raises :class:`BankError`."""
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise BankError(f"cannot read the bank {path}: {type(exc).__name__}") from None
    else:
        raw = importlib.resources.files("core").joinpath("data/questions.json").read_bytes()
    return Bank.from_json(raw)
