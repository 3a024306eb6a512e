"""The vLLM engine against the hooked model (``hf``) on the embedded model: same greedy texts but for near-ties, the
same option log-probabilities, the same bootstrap labels. One vLLM server serves the session (``vllm_server``); the
tests are skipped with the reason when no vLLM is installed (``bash .ci/setup-vllm``)."""

from __future__ import annotations

import pytest
import torch

from interventions.measure.engines import HFEngine, VllmEngine
from prism.bootstrap import BootstrapConfig, run_bootstrap
from probes.core.datasets import load_dataset
from probes.core.prompts import Condition, encode, render

NEAR_TIE = 0.05  # nats between the two engines' choices at the first token where they part
TOKENS = 32


@pytest.fixture(scope="module")
def engines(smol, vllm_server):
    model, tokenizer = smol
    vllm = VllmEngine(tokenizer, process=vllm_server, context=model.cfg.n_ctx)  # restarts the server if it dies
    yield HFEngine(model, tokenizer), vllm
    vllm.client.close()  # the session's server stays up


def _gap(model, tokenizer, prompt_ids: list[int], ours: list[int], theirs: list[int]) -> float:
    """The hooked model's log-probability gap between its own token and vLLM's where the two first differ."""
    common = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-2])) if a != b)
    with torch.inference_mode():
        logits = model.original_model(torch.tensor([prompt_ids + ours[:common]])).logits[0, -1].float()
    logprobs = logits.log_softmax(-1)
    mine = ours[common] if common < len(ours) else model.original_model.generation_config.eos_token_id
    other = theirs[common] if common < len(theirs) else model.original_model.generation_config.eos_token_id
    mine, other = (m[0] if isinstance(m, list) else m for m in (mine, other))
    return float(logprobs[mine] - logprobs[other])


def test_greedy_texts_match_hf_but_for_near_ties(smol, engines):
    model, tokenizer = smol
    hf, vllm = engines
    queries = [item.prompt for item in load_dataset("mtbench")[:24]] + [
        item.prompt for item in load_dataset("capitals")[:8]
    ]
    prompts = [render(tokenizer, query, Condition("none")) for query in queries]
    assert len(prompts) == 32
    ours = hf.generate(prompts, max_new_tokens=TOKENS, progress=False)
    theirs = vllm.generate(prompts, max_new_tokens=TOKENS)
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    ties = []
    for i in differ:
        ids = encode(tokenizer, prompts[i])
        body = vllm.sampling(ids, max_new_tokens=TOKENS, temperature=0.0)
        their_ids = vllm.complete([body])[0]["token_ids"]
        with torch.inference_mode():
            out = model.original_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=TOKENS,
                do_sample=False,
            )
        our_ids = out[0, len(ids) :].tolist()
        ties.append((i, round(_gap(model, tokenizer, ids, our_ids, their_ids), 4)))
    print(f"\ngreedy texts identical on {32 - len(differ)}/32; near-ties (prompt, gap in nats): {ties}")
    assert len(differ) <= 3, f"texts differ on {len(differ)}/32 prompts: {ties}"
    assert all(abs(gap) < NEAR_TIE for _, gap in ties), f"a divergence that is no near-tie: {ties}"


def test_option_logprobs_match_hf(smol, engines):
    _, tokenizer = smol
    hf, vllm = engines
    prompts = [
        render(tokenizer, item.prompt, Condition("none"), answer_prefix="The answer is")
        for item in load_dataset("capitals")[:6]
    ]
    options = [[" Paris", " Berlin and", " A"]] * len(prompts)
    ours, theirs = hf.option_logprobs(prompts, options), vllm.option_logprobs(prompts, options)
    worst = max(abs(a - b) for row_a, row_b in zip(ours, theirs) for a, b in zip(row_a, row_b))
    assert worst < 0.05, f"option log-probabilities differ by up to {worst:.4f} nats"


def test_bootstrap_labels_match_hf_but_for_near_ties(smol, engines, tmp_path):
    model, tokenizer = smol
    hf, vllm = engines
    # greedy queries and answers, so both engines should write the same texts and judge them the same way
    config = BootstrapConfig(
        queries_per_persona=1,
        query_temperature=0.0,
        answer_temperature=0.0,
        query_tokens=32,
        answer_tokens=32,
        max_rounds=1,
    )
    personas = ["math", "writing", "safety-monitor", "roleplay", "coding", "stem", "reasoning", "extraction"]
    ours = run_bootstrap(tmp_path / "hf", model, tokenizer, config=config, personas=personas, progress=False).samples
    theirs = run_bootstrap(
        tmp_path / "vllm", None, tokenizer, config=config, personas=personas, progress=False, engine=vllm
    ).samples
    assert len(ours) == len(theirs) >= 4
    differ = []
    for a, b in zip(ours, theirs):
        same_texts = (a.query, a.answer_plain, a.answer_persona) == (b.query, b.answer_plain, b.answer_persona)
        if (a.persona_first_wins, a.persona_second_wins) != (
            b.persona_first_wins,
            b.persona_second_wins,
        ) or not same_texts:
            differ.append((a.id, same_texts, a.margins, b.margins))
    print(f"\nbootstrap: {len(ours) - len(differ)}/{len(ours)} samples identical; differing: {differ}")
    for _, same_texts, mine, other in differ:
        if same_texts:  # same texts, another label: only where a verdict's margin is a near-tie
            assert min(abs(m) for m in (*mine, *other)) < NEAR_TIE, differ
    assert len(differ) <= max(1, len(ours) // 5), differ
