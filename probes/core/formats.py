"""Prompt formats: how a question and the start of its answer are laid out around the persona.

A persona's effect on a base model (one without a chat template) can depend on the plain-text
layout as much as on the persona, so the study runs its knowledge tasks under more than one
documented format and calls an effect a finding only if its sign holds across them. Two formats:

- ``plain`` (the toolkit's default, what every prompt used before formats existed): the query as
  is, then the answer prefix or stem. Without a chat template:
  ``"<persona>\\n\\n<query>\\n\\n<answer prefix>"``.
- ``qa``: the query labelled ``"Question: "`` and the answer labelled ``"Answer:"`` on the next
  line. Without a chat template: ``"<persona>\\n\\nQuestion: <query>\\nAnswer: <answer stem>"``;
  with one, the user message reads ``"Question: <query>"`` and the assistant turn opens with
  ``"Answer: <answer stem>"``. An answer prefix that already starts with ``"Answer:"`` is not
  labelled twice.

The persona and the template's own turns are the same in every format; only the question and
the answer's opening change.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.core.errors import ToolkitError

__all__ = ["DEFAULT_FORMAT", "FORMATS", "PromptFormat", "get_format"]

DEFAULT_FORMAT = "plain"


@dataclass(frozen=True)
class PromptFormat:
    """One prompt format.

    Attributes:
        name: the format's name (``plain``, ``qa``), as the study's ``--formats`` and tables spell it.
        description: one line for reports.
        question_label: text put before the query (``""`` or ``"Question: "``).
        answer_label: text that opens the answer, before any answer prefix or stem (``""`` or ``"Answer:"``).
        separator: what separates the query from the answer without a chat template.
    """

    name: str
    description: str
    question_label: str = ""
    answer_label: str = ""
    separator: str = "\n\n"

    def question(self, query: str) -> str:
        """The query as this format shows it."""
        return f"{self.question_label}{query}"

    def answer(self, prefix: str) -> str:
        """The opening of the answer: the label, then the task's answer prefix or stem (not labelled twice)."""
        if not self.answer_label:
            return prefix
        rest = prefix.strip().removeprefix(self.answer_label).strip()
        return f"{self.answer_label} {rest}" if rest else self.answer_label


FORMATS: dict[str, PromptFormat] = {
    fmt.name: fmt
    for fmt in (
        PromptFormat("plain", "persona, blank line, question, blank line, answer stem"),
        PromptFormat(
            "qa",
            'persona, blank line, "Question: <question>", new line, "Answer: <answer stem>"',
            question_label="Question: ",
            answer_label="Answer:",
            separator="\n",
        ),
    )
}


def get_format(name: str) -> PromptFormat:
    """The registered format ``name`` (one line naming the choices if there is none)."""
    if name not in FORMATS:
        raise ToolkitError(f"unknown prompt format {name!r}: use any of {', '.join(FORMATS)}")
    return FORMATS[name]
