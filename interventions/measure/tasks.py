"""The task registry: every evaluation task defined once, and one way to measure it.

A ``Task`` holds everything that makes a task: its items (a data set, an optional subcategory
filter, a stratified sample), its prompt settings (multiple-choice scoring mode, the answer
prefix, which an item's own answer stem replaces in cloze mode, the score normalisation, the
default generation length) and its metric. Four kinds:

- ``choice``: log-likelihood scoring of the options; accuracy, the margin of the correct
  option over the best wrong one, and the chance level;
- ``refusal``: greedy generation checked by the keyword refusal rule (refusal rate);
- ``instructions``: generation checked against the item's verifiable instruction (strict, loose);
- ``judged``: generation rated 1-10 by a judge (the callers run the judge: ``judge_request``).

Measuring is two steps that every caller shares (``evaluate``, the study runner, ``prism
compare``, ``prism intervene``): ``Task.measure`` turns rendered prompts into records (each
option's log-probability and normalised score, or the response), which a caller may keep in a
ledger; ``Task.item_metrics`` turns one record into the item's metric values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from interventions.measure.engines import Engine
from interventions.measure.generation import generate
from interventions.measure.instructions import attach_instructions, check_response
from interventions.measure.judge import JudgeRequest
from interventions.measure.refusal import is_refusal
from interventions.measure.scoring import ChoiceResult, score_choices
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.formats import DEFAULT_FORMAT
from probes.core.items import Item
from probes.core.personas import Persona
from probes.core.prompts import Condition, RenderedPrompt
from probes.core.quizzes import QUIZZES
from probes.core.rendering import continuations, render_items

__all__ = ["DEFAULT_ANSWER_PREFIX", "KINDS", "TASKS", "Task", "choice_result", "get_task", "judge_request"]

DEFAULT_ANSWER_PREFIX = "Answer:"
KINDS = ("choice", "refusal", "instructions", "judged")
CHOICE_FIELDS = ("logprobs", "scores", "predicted")  # what ``measure`` records for a multiple-choice prompt
ANSWER_FIELDS = ("response",)  # and for a generated answer


@dataclass(frozen=True)
class Task:
    """One evaluation task (see the module docstring).

    Attributes:
        name: the task's name in the registry, the study's tables and its ledger file.
        kind: ``choice``, ``refusal``, ``instructions`` or ``judged``.
        dataset: the data set ``load_dataset`` reads (None for a caller's own items).
        metrics: the per-item metric columns the task yields.
        scoring: ``letter`` or ``cloze`` for multiple choice, else None.
        normalise: the multiple-choice score normalisation (``none``, ``tokens``, ``chars``).
        answer_prefix: text that opens the assistant turn when scoring (cloze items with an
            answer stem use the stem instead); generation tasks open it with nothing.
        subcategory: keep only items of this subcategory (HarmBench: the "standard" behaviours).
        max_new_tokens: generation length when the caller gives none.
    """

    name: str
    kind: str
    dataset: str | None
    metrics: tuple[str, ...]
    scoring: str | None = None
    normalise: str | None = None
    answer_prefix: str = DEFAULT_ANSWER_PREFIX
    subcategory: str | None = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ToolkitError(f"unknown task kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if (self.kind == "choice") != (self.scoring is not None):
            raise ToolkitError(f"task {self.name!r}: multiple-choice tasks, and only they, need a scoring mode")

    @property
    def is_choice(self) -> bool:
        return self.kind == "choice"

    @property
    def record_fields(self) -> tuple[str, ...]:
        """The fields of each record ``measure`` returns (a study's ledger holds them)."""
        return CHOICE_FIELDS if self.is_choice else ANSWER_FIELDS

    def load_items(self, n: int | None, seed: int = 0) -> list[Item]:
        """Up to ``n`` items of the task's data set, stratified by category.

        Args:
            n: items to draw (None: every item).
            seed: sampling seed (and the instruction draw of ``instructions`` tasks).

        Returns:
            the items in data-set order.
        """
        if self.dataset is None:
            raise ToolkitError(f"task {self.name!r} has no data set: pass its items")
        items = load_dataset(self.dataset)
        if self.subcategory is not None:
            items = [item for item in items if item.subcategory == self.subcategory]
        items = stratified_sample(items, n, seed=seed)
        return attach_instructions(items, seed=seed) if self.kind == "instructions" else items

    def render(
        self,
        tokenizer: PreTrainedTokenizerBase,
        items: Sequence[Item],
        condition: Condition,
        *,
        personas: Mapping[str, Persona] | None = None,
        seed: int = 0,
        prompt_format: str = DEFAULT_FORMAT,
    ) -> list[RenderedPrompt]:
        """The items' prompts under ``condition``, with the task's scoring mode and answer prefix, in
        ``prompt_format``."""
        return render_items(
            tokenizer,
            items,
            condition,
            scoring=self.scoring,
            answer_prefix=self.answer_prefix if self.is_choice else "",
            personas=personas,
            seed=seed,
            prompt_format=prompt_format,
        )

    def options(self, item: Item) -> list[str]:
        """The continuations scored for a multiple-choice item."""
        return continuations(item, self.scoring)

    def answer_room(self, tokenizer: PreTrainedTokenizerBase, item: Item, max_new_tokens: int | None = None) -> int:
        """Tokens the answer takes after the prompt: the longest option, or the generation length."""
        if self.is_choice:
            return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in self.options(item))
        return max_new_tokens or self.max_new_tokens

    def measure(
        self,
        model: TransformerBridge,
        tokenizer: PreTrainedTokenizerBase,
        items: Sequence[Item],
        prompts: Sequence[RenderedPrompt],
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        seed: int = 0,
        share_prefix: bool = True,
        progress: bool = False,
        engine: Engine | None = None,
    ) -> list[dict]:
        """Score or answer each item's prompt.

        Args:
            model, tokenizer: the bridged model and its tokenizer.
            items: the items, aligned with ``prompts``.
            prompts: their rendered prompts (``render``, or any condition's rendering).
            max_new_tokens: generation length (default: the task's).
            batch_size: prompts per forward pass.
            seed: generation seed.
            share_prefix: run a shared prompt prefix once when scoring (see ``score_choices``).
            progress: show progress bars.
            engine: what generates the answers (``interventions.measure.engines``; default: ``model``, with its
                hooks). Multiple-choice scoring always runs on ``model``.

        Returns:
            one record per prompt: ``{"logprobs", "scores", "predicted"}`` for multiple choice,
            ``{"response"}`` otherwise (JSON-ready, as the study's ledger keeps them).
        """
        if self.is_choice:
            results = score_choices(
                model,
                tokenizer,
                prompts,
                [self.options(item) for item in items],
                [item.answer for item in items],
                normalise=self.normalise,
                batch_size=batch_size,
                share_prefix=share_prefix,
                progress=progress,
            )
            return [dict(zip(CHOICE_FIELDS, (list(r.logprobs), list(r.scores), r.predicted))) for r in results]
        if engine is not None:
            responses = engine.generate(
                prompts,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
            )
        else:
            responses = generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
            )
        return [dict(zip(ANSWER_FIELDS, (response,))) for response in responses]

    def item_metrics(self, item: Item, record: Mapping) -> dict:
        """The task's metric values for one item from its ``measure`` record.

        Returns:
            ``choice``: accuracy (0/1), margin (nats) and chance; ``refusal``: refusal_rate
            (0/1); ``instructions``: strict and loose (0/1) and the instruction's id;
            ``judged``: nothing (the judge rates the response).
        """
        if self.is_choice:
            result = choice_result(item, record)
            return {"accuracy": float(result.correct), "margin": result.margin, "chance": 1 / len(item.choices)}
        if self.kind == "refusal":
            return {"refusal_rate": float(is_refusal(record["response"]))}
        if self.kind == "instructions":
            strict, loose = check_response(item, record["response"])
            return {"strict": float(strict), "loose": float(loose), "instruction": item.meta["instruction_id"]}
        return {}


def choice_result(item: Item, record: Mapping) -> ChoiceResult:
    """A multiple-choice record (from ``Task.measure`` or a ledger) as a ``ChoiceResult`` (correct, margin)."""
    return ChoiceResult(tuple(record["logprobs"]), tuple(record["scores"]), record["predicted"], item.answer)


def judge_request(item: Item, answers: Sequence[str]) -> JudgeRequest:
    """What the judge rates: the item's first ``len(answers)`` turns and the model's answers to them."""
    return JudgeRequest(tuple(item.turns[: len(answers)]), tuple(answers))


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # capital-city questions (GeoNames): cloze scoring after the item's answer stem, summed log-probabilities
        Task("capitals", "choice", "capitals", ("accuracy", "margin"), scoring="cloze", normalise="none"),
        # the GeoNames quizzes (probes.core.quizzes), scored as the capitals are
        *(Task(name, "choice", name, ("accuracy", "margin"), scoring="cloze", normalise="none") for name in QUIZZES),
        Task("mmlu-letter", "choice", "mmlu", ("accuracy", "margin"), scoring="letter", normalise="none"),
        Task("mmlu-cloze", "choice", "mmlu", ("accuracy", "margin"), scoring="cloze", normalise="tokens"),
        Task("harmbench", "refusal", "harmbench", ("refusal_rate",), subcategory="standard", max_new_tokens=32),
        # MT-Bench first turns, each with one verifiable instruction attached
        Task("ifeval", "instructions", "mtbench", ("strict", "loose")),
        Task("mtbench", "judged", "mtbench", ("judge_score",)),
    )
}


def get_task(name: str) -> Task:
    """The registered task ``name`` (one line naming the choices if there is none)."""
    if name not in TASKS:
        raise ToolkitError(f"unknown task {name!r}: use any of {', '.join(TASKS)}")
    return TASKS[name]
