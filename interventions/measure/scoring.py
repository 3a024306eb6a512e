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

import copy
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.core.batching import check_context, left_pad, length_sorted_batches, positions_from_mask, window_covers
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.prompts import RenderedPrompt, encode
from probes.positions import prompts as declare_prompts

Normalisation = Literal["none", "tokens", "chars"]
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
    share_prefix: bool = True,
    progress: bool = True,
) -> list[ChoiceResult]:
    """Score each prompt's options as continuations of the prompt.

    Each context runs once; its key-value cache then serves every option (one short pass per
    option position), so four multi-token options cost about one context, not four. The
    passes go through the module the bridge wraps, so hooks added to the bridge fire.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        prompts: rendered prompts (for letter scoring they end with the answer prefix, e.g. "Answer:").
        options: for each prompt, the continuation texts to score (e.g. ``[" A", " B"]``), each non-empty.
        answers: for each prompt, the index of the correct option.
        normalise: ``none`` (summed log-probability), ``tokens`` (divided by the option's token count) or
            ``chars`` (divided by its stripped character count).
        batch_size: prompts per forward pass.
        share_prefix: run the tokens every context of a batch starts with once; ``False`` runs every context
            whole in its first pass (hooks that must see the whole prompt at once, such as a routing gate, need that).
        progress: show a progress bar.

    Returns:
        one ``ChoiceResult`` per prompt: ``logprobs`` (summed per option), ``scores`` (normalised), ``predicted``
        (their argmax), ``answer``, and the properties ``correct`` and ``margin`` (correct score minus the best
        wrong one).

    Raises:
        ToolkitError: an unknown normalisation, an option that tokenises to nothing, or a prompt plus option
            longer than the model's context.
    """
    if normalise not in NORMALISATIONS:
        raise ToolkitError(f"unknown normalisation {normalise!r}: use one of {', '.join(NORMALISATIONS)}")
    contexts = [encode(tokenizer, prompt) for prompt in prompts]
    option_ids = [[tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts] for texts in options]
    for p, id_lists in enumerate(option_ids):
        for o, ids in enumerate(id_lists):
            if not ids:
                raise ToolkitError(f"option {o} of prompt {p} is empty: every option needs text")
    longest = [len(context) + max(len(ids) for ids in id_lists) - 1 for context, id_lists in zip(contexts, option_ids)]
    check_context(longest, model.cfg.n_ctx, [f"#{p}" for p in range(len(contexts))])

    logprob: dict[tuple[int, int], float] = {}
    batches = length_sorted_batches([len(context) for context in contexts], batch_size)
    for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress, leave=False):
        with declare_prompts([len(contexts[p]) for p in batch]):  # interventions find each context's positions
            logprob.update(
                _score_batch(
                    model.original_model,
                    [contexts[p] for p in batch],
                    [option_ids[p] for p in batch],
                    batch,
                    tokenizer.pad_token_id,
                    share_prefix,
                )
            )

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


def _score_batch(
    hf_model: torch.nn.Module,
    contexts: Sequence[list[int]],
    option_ids: Sequence[Sequence[list[int]]],
    prompt_indices: Sequence[int],
    pad_id: int,
    share_prefix: bool = True,
) -> dict[tuple[int, int], float]:
    """Summed log-probabilities of every option of a batch of contexts.

    Tokens every context starts with (template and persona) run once and their cache is copied
    to each row. The rest is left-padded, so each context's last tokens sit at the end of the
    cache (sliding-window layers keep only the end) and every option starts at the same column."""
    device = model_device(hf_model)
    lengths = torch.tensor([len(context) for context in contexts], device=device)
    shared = _shared_prefix_length(contexts)
    cache = None
    if not share_prefix or shared < MIN_SHARED_PREFIX or not window_covers(hf_model, int(lengths.max())):
        shared = 0
    if shared:
        # the persona and template tokens every context starts with: run once, copy per row
        cache = hf_model(
            input_ids=torch.tensor([contexts[0][:shared]], device=device), use_cache=True, logits_to_keep=1
        ).past_key_values
        cache.batch_repeat_interleave(len(contexts))
    tokens, suffix_mask = (tensor.to(device) for tensor in left_pad([context[shared:] for context in contexts], pad_id))
    context_mask = torch.cat([torch.ones((len(contexts), shared), dtype=torch.long, device=device), suffix_mask], dim=1)
    output = hf_model(
        input_ids=tokens,
        attention_mask=context_mask,
        position_ids=shared + positions_from_mask(suffix_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits: the unembedding is a fifth of the model
    )
    first = output.logits[:, -1].float().log_softmax(-1)  # predicts each option's first token
    scores: dict[tuple[int, int], float] = {}
    for o in range(max(len(id_lists) for id_lists in option_ids)):
        tails = [id_lists[o] if o < len(id_lists) else [] for id_lists in option_ids]
        for row, ids in enumerate(tails):
            if ids:
                scores[(prompt_indices[row], o)] = float(first[row, ids[0]])
        # the rest of each option: feed all its tokens but the last after the cached context
        steps = max(len(ids) - 1 for ids in tails)
        if steps <= 0:
            continue
        fed = torch.full((len(tails), steps), pad_id, dtype=torch.long)
        fed_mask = torch.zeros((len(tails), steps), dtype=torch.long)
        for row, ids in enumerate(tails):
            fed[row, : len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
            fed_mask[row, : len(ids) - 1] = 1
        fed, fed_mask = fed.to(device), fed_mask.to(device)
        logits = (
            hf_model(
                input_ids=fed,
                attention_mask=torch.cat([context_mask, fed_mask], dim=1),
                position_ids=lengths[:, None] + torch.arange(steps, device=device)[None, :],
                past_key_values=copy.deepcopy(output.past_key_values),  # each option starts from the context
                use_cache=True,
            )
            .logits.float()
            .log_softmax(-1)
        )
        for row, ids in enumerate(tails):
            for j, token in enumerate(ids[1:]):
                scores[(prompt_indices[row], o)] += float(logits[row, j, token])
    return scores


MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate pass


def _shared_prefix_length(contexts: Sequence[list[int]]) -> int:
    """Tokens all contexts share at the start, leaving each at least one token of its own."""
    shortest = min(len(context) for context in contexts)
    length = 0
    while length < shortest - 1 and all(context[length] == contexts[0][length] for context in contexts):
        length += 1
    return length if len(contexts) > 1 else 0
