"""Multiple-choice scoring by log-likelihood on the hooked model.

Two modes, as in the literature:
- ``letter``: the options are listed in the query as "A. ...", and the model's log-probability of
  each letter (" A", " B", ...) after the answer prefix ("Answer:") decides (the paper's MMLU).
- ``cloze``: the query holds the question alone and each option's text is scored as the
  continuation of the answer prefix; scores are summed log-probabilities, optionally divided by
  the option's token or character count (``normalise``).

Every item also gets a continuous metric: the margin of the correct option's score over the
best wrong option, which moves long before accuracy does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.batching import check_context, length_sorted_batches, right_pad
from probes.datasets import LETTERS, Item
from probes.errors import ToolkitError
from probes.prompts import RenderedPrompt, encode

ScoringMode = Literal["letter", "cloze"]
Normalisation = Literal["none", "tokens", "chars"]
SCORING_MODES = ("letter", "cloze")
NORMALISATIONS = ("none", "tokens", "chars")


@dataclass(frozen=True)
class ChoiceResult:
    logprobs: tuple[float, ...]  # summed log-probability of each option's continuation
    scores: tuple[float, ...]  # after normalisation; the prediction is their argmax
    predicted: int
    answer: int

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer

    @property
    def margin(self) -> float:
        """Score of the correct option minus the best wrong option's score."""
        wrong = [score for index, score in enumerate(self.scores) if index != self.answer]
        return self.scores[self.answer] - max(wrong)


def question_text(item: Item, mode: ScoringMode) -> str:
    """The query shown to the model: options listed for letter mode, the question alone for cloze."""
    if not item.is_multiple_choice:
        raise ToolkitError(f"item {item.id} has no choices and answer: it cannot be scored as multiple choice")
    if mode == "cloze":
        return item.prompt
    if mode != "letter":
        raise ToolkitError(f"unknown scoring mode {mode!r}: use one of {', '.join(SCORING_MODES)}")
    options = "\n".join(f"{LETTERS[index]}. {choice}" for index, choice in enumerate(item.choices))
    return f"{item.prompt}\n{options}"


def continuations(item: Item, mode: ScoringMode) -> list[str]:
    if mode == "letter":
        return [f" {LETTERS[index]}" for index in range(len(item.choices))]
    return [f" {choice.strip()}" for choice in item.choices]


@torch.inference_mode()
def score_choices(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RenderedPrompt],
    options: Sequence[Sequence[str]],
    answers: Sequence[int],
    *,
    normalise: Normalisation = "none",
    batch_size: int = 8,
    progress: bool = True,
) -> list[ChoiceResult]:
    """Score each prompt's options as continuations of the prompt."""
    if normalise not in NORMALISATIONS:
        raise ToolkitError(f"unknown normalisation {normalise!r}: use one of {', '.join(NORMALISATIONS)}")
    contexts = [encode(tokenizer, prompt) for prompt in prompts]
    option_ids = [
        [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts] for texts in options
    ]
    # One forward job per sequence; each job reads one or more (option slot, start, ids).
    # When every option of a prompt is a single token (letter mode), one pass over the
    # context serves all of them.
    jobs: list[tuple[list[int], list[tuple[tuple[int, int], int, list[int]]]]] = []
    for p, (context, id_lists) in enumerate(zip(contexts, option_ids)):
        for o, ids in enumerate(id_lists):
            if not ids:
                raise ToolkitError(f"option {o} of prompt {p} is empty: every option needs text")
        if all(len(ids) == 1 for ids in id_lists):
            jobs.append((context, [((p, o), len(context), ids) for o, ids in enumerate(id_lists)]))
        else:
            jobs.extend((context + ids, [((p, o), len(context), ids)]) for o, ids in enumerate(id_lists))
    lengths = [len(sequence) for sequence, _ in jobs]
    check_context(lengths, model.cfg.n_ctx, [f"#{reads[0][0][0]}" for _, reads in jobs])

    logprob: dict[tuple[int, int], float] = {}
    batches = length_sorted_batches(lengths, batch_size)
    for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress, leave=False):
        tokens = right_pad([jobs[index][0] for index in batch], tokenizer.pad_token_id)
        logits = model(tokens)
        for row, index in enumerate(batch):
            for slot, start, ids in jobs[index][1]:
                # logits at position t predict token t + 1
                step = logits[row, start - 1 : start - 1 + len(ids)].float().log_softmax(-1)
                logprob[slot] = float(step.gather(-1, torch.tensor(ids)[:, None]).sum())

    results = []
    for p, texts in enumerate(options):
        lps = [logprob[(p, o)] for o in range(len(texts))]
        token_counts = [len(ids) for ids in option_ids[p]]
        if normalise == "tokens":
            scores = [lp / count for lp, count in zip(lps, token_counts)]
        elif normalise == "chars":
            scores = [lp / max(1, len(text.strip())) for lp, text in zip(lps, texts)]
        else:
            scores = lps
        predicted = max(range(len(scores)), key=scores.__getitem__)
        results.append(ChoiceResult(tuple(lps), tuple(scores), predicted, answers[p]))
    return results
