"""The study report's findings in plain words, set against the paper's, under the prompt-format control.

Every number is a mean with its bootstrap 95% CI and n. A knowledge effect measured under several
prompt formats is called a finding only when it has the same sign and is significant in every
format (``interventions.study.agreement``); an effect that is significant in one format and goes
the other way in another is named as depending on the format, never as a property of the model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from interventions.measure.tasks import TASKS
from interventions.study.agreement import DEPENDS, HOLDS, ONE_FORMAT, per_format
from interventions.study.effects import BASELINE_LABEL
from probes.core.stats import Estimate

__all__ = ["KNOWLEDGE_TASKS", "across", "find", "findings", "fmt", "verdict"]

KNOWLEDGE_TASKS = tuple(name for name, task in TASKS.items() if task.is_choice)  # capitals, mmlu-letter, mmlu-cloze


def fmt(row: Mapping | None, centre: str = "mean", signed: bool = False) -> str:
    """A cell's mean or an effect's delta as ``"+0.12 [0.02, 0.20]* (n=40)"`` (the star only for effects)."""
    if row is None:
        return "—"
    if row.get(centre) is None:
        return f"no values (n={row['n']})"
    estimate = Estimate.from_columns(row, centre, prefix="")
    return estimate.format(signed=signed, star="significant" in row, n=True)  # effects carry a significance, cells not


def find(table: Sequence[Mapping], **where) -> Mapping | None:
    """The first row whose fields equal ``where``, or None."""
    for row in table:
        if all(row.get(key) == value for key, value in where.items()):
            return row
    return None


def verdict(effect: Mapping | None, expected_sign: int, formats_verdict: str = ONE_FORMAT) -> str:
    """Whether a paired effect goes the paper's way, and whether it is significant; a significant effect that does
    not hold across prompt formats (``formats_verdict``) is said to hold in its format only."""
    if effect is None:
        return "not measured"
    same = effect["delta"] * expected_sign > 0
    if effect["significant"]:
        text = "reproduces the paper's direction (significant)" if same else "goes against the paper (significant)"
        if formats_verdict not in (ONE_FORMAT, HOLDS):
            text += f" in this format only ({formats_verdict}: no finding)"
        return text
    if effect["delta"] == 0:
        return "no change at all (not significant)"
    return f"{'same' if same else 'opposite'} direction as the paper, not significant"


def across(row: Mapping) -> str:
    """An agreement row's effect in each of its formats: ``"plain -0.52 [-0.71, -0.33]* (n=80), qa +0.31 ..."``."""
    return ", ".join(
        f"`{name}` {per_format(row, name).format(signed=True, star=True, n=True)}" for name in row["formats"].split(",")
    )


def findings(effects: Sequence[Mapping], consistency: Mapping, agreement: Sequence[Mapping] = ()) -> list[str]:
    """The report's "Findings, set against the paper" bullets (Markdown).

    Args:
        effects: ``effect_table`` rows (one per format).
        consistency: ``judge_consistency``'s result.
        agreement: ``format_agreement`` rows (empty: every effect is taken as measured in one format).
    """
    found = _knowledge(effects, agreement)
    safety = find(
        effects,
        task="harmbench",
        persona_spec="safety-monitor",
        length="long",
        placement="system",
        metric="refusal_rate",
        reference=BASELINE_LABEL,
    )
    if safety:
        found.append(
            f"- **Safety monitor and refusal** (paper: refusal rises): long safety-monitor persona "
            f"{fmt(safety, 'delta', True)}: {verdict(safety, +1)}."
        )
    for task, metric, claim in (
        ("ifeval", "strict", "instruction following"),
        ("mtbench", "judge_score", "judged generation quality"),
    ):
        expert = find(
            effects,
            task=task,
            persona_spec="expert",
            length="long",
            placement="system",
            metric=metric,
            reference=BASELINE_LABEL,
        )
        if expert:
            found.append(
                f"- **Expert persona and {claim}** (paper: alignment-dependent tasks improve): long expert "
                f"persona {fmt(expert, 'delta', True)}: {verdict(expert, +1)}."
            )
        versus = find(
            effects,
            task=task,
            persona_spec="expert",
            length="long",
            placement="system",
            metric=metric,
            reference="random/long/system[empty]",
        )
        if versus:
            found.append(
                f"  - expert over a random persona of the same length: {fmt(versus, 'delta', True)} ("
                + (
                    "expertise matters"
                    if versus["significant"]
                    else "no evidence that expertise, rather than any persona, matters"
                )
                + ")."
            )
    if consistency.get("judgements"):
        found.append(_judge_noise(consistency))
    placement = [
        (
            row,
            find(
                effects,
                task=row["task"],
                format=row.get("format"),
                metric=row["metric"],
                persona_spec=row["persona_spec"],
                length=row["length"],
                placement="user",
                reference=BASELINE_LABEL,
            ),
        )
        for row in effects
        if row["placement"] == "system"
        and row["length"] == "long"
        and row["reference"] == BASELINE_LABEL
        and row["persona_spec"] in ("expert", "random")
    ]
    placement = [(s, u) for s, u in placement if u is not None]
    if placement:
        larger = sum(abs(s["delta"]) > abs(u["delta"]) for s, u in placement)
        found.append(
            f"- **Placement**: the long persona moved the metric more from the system prompt than from "
            f"the user message in {larger} of {len(placement)} task-metric pairs (see fig1d)."
        )
    return found or ["- No persona effects were measured."]


def _names(formats: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in formats)


def _knowledge(effects: Sequence[Mapping], agreement: Sequence[Mapping]) -> list[str]:
    knowledge = [
        row
        for row in effects
        if row["task"] in KNOWLEDGE_TASKS
        and row["metric"] == "margin"
        and row["reference"] == BASELINE_LABEL
        and row["persona_spec"] != "none"
    ]
    if not knowledge:
        return []
    formats = list(dict.fromkeys(row.get("format", "plain") for row in knowledge))
    verdicts = {
        (row["task"], row["condition"]): row["verdict"]
        for row in agreement
        if row["metric"] == "margin" and row["reference"] == BASELINE_LABEL
    }
    counts = []
    for name in formats:
        rows = [row for row in knowledge if row.get("format", "plain") == name]
        counts.append(
            f"{'in `' + name + '` ' if len(formats) > 1 else ''}the correct option's margin fell in "
            f"{sum(row['delta'] < 0 for row in rows)} of {len(rows)}; "
            f"{sum(row['significant'] and row['delta'] < 0 for row in rows)} falls and "
            f"{sum(row['significant'] and row['delta'] > 0 for row in rows)} rises are significant"
        )
    n_conditions = len({(row["task"], row["condition"]) for row in knowledge})
    text = (
        f"- **Personas and knowledge retrieval** (paper: every persona lowers MMLU). Over {n_conditions} persona "
        f"conditions on the knowledge tasks, " + "; ".join(counts) + "."
    )
    if len(formats) == 1:
        found = [text + f" One prompt format (`{formats[0]}`): these signs were not checked under another layout."]
    else:
        found = [text + _format_control(knowledge, formats, agreement)]
    for task in KNOWLEDGE_TASKS:
        for spec in ("expert", "random"):
            lines = []
            for name in formats:
                where = dict(task=task, persona_spec=spec, placement="system", format=name)
                short, long = find(knowledge, length="min", **where), find(knowledge, length="long", **where)
                if short and long:
                    lines.append(
                        f"  - {task}, {spec} persona{f' (`{name}`)' if len(formats) > 1 else ''}: min "
                        f"{fmt(short, 'delta', True)} nats, long {fmt(long, 'delta', True)}: long persona "
                        f"{verdict(long, -1, verdicts.get((task, long['condition']), ONE_FORMAT))}; long minus min "
                        f"{long['delta'] - short['delta']:+.2f} nats "
                        f"({'longer is worse' if long['delta'] < short['delta'] else 'longer is not worse'}; "
                        "paper: longer personas hurt more)."
                    )
            if lines:
                found += lines
                break
    return found


def _format_control(knowledge: Sequence[Mapping], formats: Sequence[str], agreement: Sequence[Mapping]) -> str:
    """The format control's sentences and sub-bullets for the knowledge bullet."""
    rows = [
        row
        for row in agreement
        if row["task"] in KNOWLEDGE_TASKS
        and row["metric"] == "margin"
        and row["reference"] == BASELINE_LABEL
        and row["persona_spec"] != "none"
        and "," in row["formats"]
    ]
    holds = [row for row in rows if row["verdict"] == HOLDS]
    depends = [row for row in rows if row["verdict"] == DEPENDS]
    first = formats[0]
    falls = sum(row[f"delta_{first}"] < 0 for row in holds)
    text = (
        f" An effect is called a finding only if its sign holds, significantly, in every prompt format "
        f"({_names(formats)}): {len(holds)} of {len(rows)} persona conditions do ({falls} falls, "
        f"{len(holds) - falls} rises); {len(depends)} depend on the format (significant in one format, "
        f"zero or the other sign in another); the other {len(rows) - len(holds) - len(depends)} are not "
        "significant in every format."
    )
    every = [
        name
        for name in formats
        if all(row["delta"] < 0 and row["significant"] for row in knowledge if row.get("format", "plain") == name)
    ]
    if every and len(every) < len(formats):
        text += (
            f"\n  - Every persona condition lowers the margin significantly in {_names(every)} but not in "
            f'{_names([name for name in formats if name not in every])}: "every persona lowers knowledge" is '
            "a property of the prompt format here, not of the model."
        )
    elif every:
        text += "\n  - Every persona condition lowers the margin significantly in every format."
    for task in KNOWLEDGE_TASKS:
        for label, chosen in (("depends on the format", depends), ("findings (hold across formats)", holds)):
            mine = [row for row in chosen if row["task"] == task]
            if mine:
                shown = "; ".join(f"{row['condition']}: {across(row)}" for row in mine[:6])
                text += (
                    f"\n  - {task}, {label}: {shown}" + (f"; and {len(mine) - 6} more" if len(mine) > 6 else "") + "."
                )
    return text


def _judge_noise(consistency: Mapping) -> str:
    parse = consistency.get("parse_rate") or 0
    text = f"- **Judge noise**: {consistency['parsed']}/{consistency['judgements']} judgements parsed ({parse:.0%})"
    if consistency.get("pairs"):
        text += (
            f"; the same answer judged with two sampling seeds agreed exactly in "
            f"{consistency['exact_agreement']:.0%} of {consistency['pairs']} pairs, mean |difference| "
            f"{consistency['mean_abs_difference']:.2f} points"
        )
    if consistency.get("share_most_common") is not None:
        text += f"; {consistency['share_most_common']:.0%} of ratings are {consistency['most_common_rating']:g}" + (
            " (the example rating in the judge prompt: the judge mostly copies it)"
            if consistency["most_common_rating"] == 5
            else ""
        )
    return text + ". Differences in judge score smaller than this noise say nothing."
