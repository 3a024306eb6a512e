"""PRISM on tiny random models: gate, gated LoRA distillation, routed inference, artefacts."""

import json

import numpy as np
import pytest
import torch

import prism.bootstrap
import prism.pairs
import probes.core.rendering
from interventions.measure.generation import generate
from interventions.measure.scoring import score_choices
from interventions.study.ledger import Ledger
from prism import pipeline
from prism.adapters import active_adapter, adapter_layers, attach_adapter, load_adapter, save_adapter
from prism.bootstrap import BootstrapConfig, clean_query
from prism.compare import DATASETS, KNOWLEDGE, CompareBudget
from prism.distill import DistillConfig, distill, distillation_loss
from prism.gate import Gate, fit_gate, gate_features, template_tokens, train_gate
from prism.routing import Routed, route_probabilities
from prism.samples import Sample, load_samples, summarise
from prism.train import _exam_check, _exam_stems, labelled_prompts
from prism.unseen import evaluate, held_out_rate, probe_scorer
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.files import save_tensors
from probes.core.internals import lora_update
from probes.core.models import load_model
from probes.core.personas import builtin_personas, persona_library
from probes.core.prompts import Condition, encode, render
from probes.splits import Split
from tests.gate_queries import QUERIES


def _samples(n: int = 6) -> list[Sample]:
    return [
        Sample(
            f"math-{i}",
            "math",
            f"What is {i} plus {i + 1}? Explain why.",
            "It is.",
            f"The sum is {2 * i + 1}, since adding one more gives it.",
            True,
            True,
            (1.0, 1.0),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def trained(tiny_llama_directory, tmp_path_factory):
    """A fresh tiny model with a trained adapter 'prism' on blocks 1..2 and a logistic gate on block 0."""
    model, tokenizer = load_model(tiny_llama_directory)
    config = DistillConfig(epochs=4, learning_rate=2e-3, first_block=1)
    info = distill(model, tokenizer, _samples(), "prism", config, progress=False)
    x = gate_features(model, tokenizer, QUERIES, [0], "last", tmp_path_factory.mktemp("features"), progress=False)[0]
    labels = np.array([0, 1, 0, 1, 0, 1])
    split = Split(np.arange(6), np.arange(6))
    gate, _ = fit_gate(x, labels, split, layer=0, position="last")
    probabilities = gate.probability(x)
    gate.threshold = float(np.median(probabilities))  # half the queries routed: a mixed batch
    return model, tokenizer, gate, info


def test_the_teacher_keeps_its_persona_and_distillation_closes_the_gap(tiny_llama_directory):
    model, tokenizer = load_model(tiny_llama_directory)
    sample = _samples(1)[0]
    config = DistillConfig(epochs=6, learning_rate=2e-3)
    attach_adapter(
        model, "probe", rank=config.rank, alpha=config.alpha, first_block=config.first_block, seed=config.seed
    )  # untrained: lora_B starts at zero, the student is the plain model
    with active_adapter(model, "probe"):
        untrained = distillation_loss(model, tokenizer, sample, config)
    assert untrained > 1e-6  # the teacher saw the persona; the student did not (a tiny random model: small KLs)
    info = distill(model, tokenizer, _samples(), "prism", config, progress=False)
    with active_adapter(model, "prism"):
        assert distillation_loss(model, tokenizer, sample, config) < 0.5 * untrained
    assert info["steps"] == 6 * 2 and info["n_samples"] == 6


def test_adapters_round_trip_and_load_onto_the_plain_model(trained, tiny_llama_directory, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer, _, info = trained
    ids = torch.tensor([tokenizer("Hello there, a test sentence")["input_ids"]])
    with active_adapter(model, "prism"), torch.no_grad():
        adapted = model.original_model(ids).logits
    with torch.no_grad():
        assert (model.original_model(ids).logits - adapted).abs().max() > 1e-4
    save_adapter(model, "prism", tmp_path / "adapter", info["peft_config"], info)
    fresh, _ = load_model(tiny_llama_directory)
    with torch.no_grad():
        plain_logits = fresh.original_model(ids).logits
    load_adapter(fresh, "prism", tmp_path / "adapter")
    load_adapter(fresh, "again", tmp_path / "adapter")
    with torch.no_grad():  # loading never switches an adapter on
        assert torch.equal(fresh.original_model(ids).logits, plain_logits)
    with active_adapter(fresh, "prism"), torch.no_grad():
        assert torch.equal(fresh.original_model(ids).logits, adapted)
        plain = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_llama_directory), tmp_path / "adapter"
        )
        assert torch.allclose(plain(ids).logits, adapted, atol=1e-4)


def test_damaged_or_mismatched_adapters_fail_with_one_line(
    trained, tiny_llama_directory, tiny_gemma_directory, tmp_path
):
    model, _, _, info = trained
    directory = save_adapter(model, "prism", tmp_path / "adapter", info["peft_config"])
    (directory / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    fresh, _ = load_model(tiny_llama_directory)
    with pytest.raises(ToolkitError, match="not a readable safetensors"):
        load_adapter(fresh, "prism", directory)
    with pytest.raises(ToolkitError, match="no adapter at"):
        load_adapter(fresh, "prism", tmp_path / "missing")
    good = save_adapter(model, "prism", tmp_path / "good", info["peft_config"])
    gemma, _ = load_model(tiny_gemma_directory)  # two blocks: the adapter adapts block 2
    with pytest.raises(ToolkitError, match="adapts block 2"):
        load_adapter(gemma, "prism", good)
    config = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(ToolkitError, match="does not match"):
        load_adapter(fresh, "other", good)


def test_gates_round_trip_and_reject_other_files(trained, tmp_path):
    _, _, gate, _ = trained
    gate.save(tmp_path / "gate.safetensors")
    loaded = Gate.load(tmp_path / "gate.safetensors")
    x = np.random.default_rng(0).normal(size=(5, gate.tensors["weight"].shape[0]))
    assert np.array_equal(loaded.probability(x), gate.probability(x)) and loaded.threshold == gate.threshold
    assert (loaded.layer, loaded.position, loaded.kind) == (0, "last", "logistic")
    save_tensors(tmp_path / "direction.safetensors", {"direction": torch.ones(3)}, {"kind": "direction"})
    with pytest.raises(ToolkitError, match="not a PRISM gate"):
        Gate.load(tmp_path / "direction.safetensors")


def test_the_gate_read_in_the_answering_pass_matches_a_separate_partial_pass(trained):
    model, tokenizer, gate, _ = trained
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    separate = route_probabilities(model, tokenizer, gate, QUERIES)
    with Routed(model, gate, adapter="prism") as routed:
        generate(
            model, tokenizer, prompts, max_new_tokens=3, batch_size=6, progress=False
        )  # left-padded, mixed lengths
    in_pass = np.array([routed.decision(encode(tokenizer, prompt))[0] for prompt in prompts])
    assert np.allclose(in_pass, separate, atol=1e-5)
    routes = [routed.decision(encode(tokenizer, prompt))[1] for prompt in prompts]
    assert 0 < sum(routes) < len(routes)  # a mixed batch
    assert routes == list(separate >= gate.threshold)


def test_a_mixed_batch_gives_each_sequence_the_logits_of_its_own_route(trained):
    model, tokenizer, gate, _ = trained
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    options = [[" yes", " no and more"]] * len(prompts)
    with Routed(model, gate, adapter="prism") as routed:
        mixed = score_choices(
            model, tokenizer, prompts, options, [0] * len(prompts), batch_size=6, share_prefix=False, progress=False
        )
    for prompt, result in zip(prompts, mixed):
        with active_adapter(model, "prism" if routed.decision(encode(tokenizer, prompt))[1] else None):
            alone = score_choices(model, tokenizer, [prompt], options[:1], [0], batch_size=1, progress=False)[0]
        assert np.allclose(result.logprobs, alone.logprobs, atol=1e-4)


def _adapter_state(model) -> list:
    return [
        (layer.active_adapters, layer.disable_adapters, [p.requires_grad for p in layer.parameters()])
        for layer in adapter_layers(model)
    ]


def test_active_adapter_restores_the_previous_state_even_when_the_block_raises(trained):
    model, tokenizer, _, _ = trained
    ids = torch.tensor([tokenizer("Hello there, a test sentence")["input_ids"]])

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model.original_model(ids).logits

    before, plain = _adapter_state(model), logits()
    with active_adapter(model, "prism"):
        adapted = logits()
        inside = _adapter_state(model)
        assert not torch.equal(adapted, plain)
        with pytest.raises(RuntimeError, match="boom"):
            with active_adapter(model, None):
                assert torch.equal(logits(), plain)
                raise RuntimeError("boom")
        assert torch.equal(logits(), adapted) and _adapter_state(model) == inside  # "prism" is back on
    assert torch.equal(logits(), plain) and _adapter_state(model) == before
    with pytest.raises(ValueError):
        with active_adapter(model, "prism"):
            raise ValueError("inside the adapter")
    assert torch.equal(logits(), plain) and _adapter_state(model) == before


def test_routed_steering_only_moves_routed_rows(trained):
    model, tokenizer, gate, _ = trained
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    options = [[" yes", " no"]] * len(prompts)
    plain = score_choices(model, tokenizer, prompts, options, [0] * len(prompts), share_prefix=False, progress=False)
    vector = torch.randn(model.cfg.d_model) * 5
    with Routed(model, gate, steering=(1, vector)) as routed:
        steered = score_choices(
            model, tokenizer, prompts, options, [0] * len(prompts), share_prefix=False, progress=False
        )
    for prompt, before, after in zip(prompts, plain, steered):
        moved = not np.allclose(before.logprobs, after.logprobs, atol=1e-5)
        assert moved == routed.decision(encode(tokenizer, prompt))[1]


def test_routing_refuses_an_adapter_that_reaches_the_gates_block(trained):
    model, _, gate, _ = trained
    late = Gate(gate.kind, 1, gate.position, gate.tensors, gate.threshold)
    with pytest.raises(ToolkitError, match="at or before the gate's block"):
        with Routed(model, late, adapter="prism"):
            pass
    with pytest.raises(ToolkitError, match="exactly one"):
        Routed(model, gate)


def test_bootstrap_labels_need_both_orders_and_queries_are_cleaned():
    assert (
        clean_query("1. What is the tallest mountain on Earth?\nMore text") == "What is the tallest mountain on Earth?"
    )
    assert (
        clean_query('Question: "How do vaccines train the immune system?"')
        == "How do vaccines train the immune system?"
    )
    assert clean_query("Hi?") is None
    first_only = Sample("a", "math", "q", "p", "x", True, False, (1.0, -1.0))
    both = Sample("b", "math", "q", "p", "x", True, True, (1.0, 1.0))
    assert (first_only.label, both.label) == (0, 1)
    summary = summarise([first_only, both, both, first_only, both])
    assert summary["overall"]["win_rate"] == pytest.approx(0.6)
    assert summary["overall"]["order_agreement"] == pytest.approx(0.6)


def test_given_decisions_route_rows_without_the_gates_verdict(trained):
    model, tokenizer, gate, _ = trained
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    keys = [tuple(encode(tokenizer, prompt)) for prompt in prompts]
    with Routed(model, gate, adapter="prism") as by_gate:
        score_choices(model, tokenizer, prompts, [[" yes", " no"]] * 6, [0] * 6, share_prefix=False, progress=False)
    flipped = {key: not by_gate.decision(key)[1] for key in keys}
    with Routed(model, gate, adapter="prism", decisions=flipped) as given:
        score_choices(model, tokenizer, prompts, [[" yes", " no"]] * 6, [0] * 6, share_prefix=False, progress=False)
    assert [given.decision(key)[1] for key in keys] == [flipped[key] for key in keys]
    with pytest.raises(ToolkitError, match="no routing decision was given"):
        with Routed(model, gate, adapter="prism", decisions={keys[0]: True}):
            score_choices(model, tokenizer, prompts[1:2], [[" yes", " no"]], [0], share_prefix=False, progress=False)


def test_routing_hooks_run_only_while_a_routed_row_needs_them(trained):
    model, tokenizer, gate, _ = trained
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES[:2]]
    keys = [tuple(encode(tokenizer, prompt)) for prompt in prompts]
    layers = [layer for layer in adapter_layers(model) if "prism" in layer.lora_B]
    gate_point = model.hook_dict[gate.hook]

    def state() -> tuple[int, set[bool], int]:  # hooks on the LoRA updates, LoRA on, hooks on the gate's block
        hooks = sum(len(lora_update(layer, "prism")._forward_hooks) for layer in layers)
        return hooks, {not layer.disable_adapters for layer in layers}, len(gate_point._forward_hooks)

    before = state()
    for routes, hooks, on in (((False, False), 0, False), ((True, True), 0, True), ((True, False), len(layers), True)):
        with Routed(model, gate, adapter="prism", decisions=dict(zip(keys, routes))):
            score_choices(model, tokenizer, prompts, [[" yes", " no"]] * 2, [0, 0], share_prefix=False, progress=False)
            assert state() == (hooks, {on}, 0), routes  # the gate's hook is gone once it has read the prefill
    assert state() == before
    vector = torch.randn(model.cfg.d_model)
    steer_point = model.hook_dict["blocks.1.hook_out"]
    for routes, hooks in (((False, False), 0), ((True, False), 1)):
        with Routed(model, gate, steering=(1, vector), decisions=dict(zip(keys, routes))):
            score_choices(model, tokenizer, prompts, [[" yes", " no"]] * 2, [0, 0], share_prefix=False, progress=False)
            assert len(steer_point._forward_hooks) == hooks, routes
    assert len(steer_point._forward_hooks) == 0


def test_the_pipeline_runs_end_to_end_and_resumes(tiny_llama_directory, tmp_path):
    out = tmp_path / "prism"
    config = BootstrapConfig(queries_per_persona=3, query_tokens=12, answer_tokens=8)
    summary = pipeline.bootstrap(
        out, model_name=tiny_llama_directory, config=config, personas=["math", "writing", "critic"], progress=False
    )
    assert summary.overall.win_rate.n >= 3 and (out / "bootstrap" / "samples.jsonl").is_file()
    budget = CompareBudget(
        capitals=4,
        harmbench=2,
        mtbench=2,
        refusal_tokens=4,
        answer_tokens=4,
        continents=3,
        currencies=3,
        city_countries=3,
    )
    trained = pipeline.train(
        out,
        labels="intents",
        per_intent=12,
        compare_budget=budget,
        max_block=1,
        distill_config=DistillConfig(epochs=1, persona_length="long"),
        progress=False,
    )
    assert trained.layer <= 1 and (out / "adapters" / "prism" / "adapter_config.json").is_file()
    assert PrismDirectory(out).teacher_length() == "long"
    # the gate never saw a source that asks what the comparison's knowledge sets ask
    assert trained.record["excluded_sources"] == ["geo:city", "geo:continent", "geo:currency"]
    assert not {row["source"] for row in trained.sources} & set(trained.record["excluded_sources"])
    assert {"geo:language", "mtbench"} <= {row["source"] for row in trained.sources}
    assert set(trained.record["routing_quality"]) >= {"gate", "embedding", "self_classify"}
    assert (
        set(trained.routers) == {"embedding", "self_classify"}
        and trained.auc.n == trained.record["routing_quality"]["n_test"]
    )
    compared = pipeline.compare(out, budget=budget, progress=False)
    assert [row["system"] for row in compared.table] == list(pipeline.SYSTEMS)
    assert (out / "compare" / "report.md").read_text().startswith("# PRISM compared")
    cells = sorted((out / "compare" / "cells").glob("*.json"))
    assert len(cells) == len(DATASETS) * len(pipeline.SYSTEMS)
    knowledge = compared.record["knowledge"]
    assert {(r["source"], r["system"]) for r in knowledge} == {(d, s) for d in KNOWLEDGE for s in pipeline.SYSTEMS}
    assert {r["n"] for r in knowledge if r["source"] == "currencies"} == {3}
    assert "margin_vs_base" in next(r for r in knowledge if r["system"] == "PRISM" and r["source"] == "city-countries")
    assert (
        len(compared.record["router_rates"]) == 3 * len(DATASETS)
        and compared.record["excluded_sources"] == trained.record["excluded_sources"]
    )
    assert "knowledge sources" in compared.report.read_text()
    rows = {row["system"]: row for row in compared.table}
    assert rows["PRISM"]["teacher_length"] == "long" and "teacher_length" not in rows["expert prompt (long)"]
    if trained.record["adapters"]["prism"]["fidelity"]:  # measured when the gate sends a held-out sample its way
        assert rows["PRISM"]["fidelity"] == trained.fidelity("prism").mean
        assert "of the long persona" in compared.format()
    assert "persona carried" in compared.format() and "What the table shows" in compared.report.read_text()
    assert any(line.startswith("- expert prompt (long): knowledge margin vs base") for line in compared.trade_off())
    long_prompt = json.loads((out / "compare" / "cells" / "expert-prompt--long__capitals.json").read_text())["rows"]
    assert {row["persona"] for row in long_prompt} == {"humanities"}
    before = [cell.stat().st_mtime_ns for cell in cells]
    pipeline.compare(out, budget=budget, progress=False)  # every finished cell is reused
    assert [cell.stat().st_mtime_ns for cell in cells] == before
    answers = pipeline.route(out, ["What is the capital of Peru?", "Write a haiku about rain."], max_new_tokens=4)
    assert [set(a) >= {"probability", "routed", "answer"} for a in answers] == [True, True]
    with pytest.raises(ToolkitError, match="bootstrapped with model"):
        pipeline.train(out, model_name="default")


@pytest.mark.parametrize("position", ["mean", "query"])
def test_mean_read_outs_in_the_answering_pass_match_the_partial_pass(trained, position, tmp_path):
    model, tokenizer, _, _ = trained
    x = gate_features(model, tokenizer, QUERIES, [0], position, tmp_path, progress=False)[0]
    gate, _ = fit_gate(
        x,
        np.array([0, 1, 0, 1, 0, 1]),
        Split(np.arange(6), np.arange(6)),
        layer=0,
        position=position,
        template=template_tokens(tokenizer),
    )
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    with Routed(model, gate, adapter="prism") as routed:
        generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=6, progress=False)
    in_pass = np.array([routed.decision(encode(tokenizer, prompt))[0] for prompt in prompts])
    assert np.allclose(in_pass, gate.probability(x), atol=1e-5)
    if position == "query":
        before, after = template_tokens(tokenizer)
        assert before > 0 and after > 0
        assert Gate.load(gate.save(tmp_path / "gate.safetensors")).template == (before, after)


def test_extra_knowledge_queries_join_the_intent_labels(tmp_path):
    extra = tmp_path / "facts.jsonl"
    rows = [
        {
            "id": f"f{i}",
            "prompt": f"What is the capital of country number {i}?",
            "category": "knowledge",
            "subcategory": f"country-{i}",
        }
        for i in range(40)
    ]
    extra.write_text("".join(json.dumps(row) + "\n" for row in rows))
    labelled = labelled_prompts(
        "intents", [], per_intent=30, extra=[str(extra)], exclude={"What is the capital of country number 0?"}
    )
    added = [q for q in labelled.queries if q.startswith("What is the capital of country number")]
    assert added and "What is the capital of country number 0?" not in added
    assert all(label == 0 for q, label in zip(labelled.queries, labelled.labels) if q in added)


def test_the_exam_check_routes_mmlu_stems_that_neither_the_gate_nor_the_comparison_uses(tiny):
    model, tokenizer = tiny
    labelled = labelled_prompts("intents", [], per_source=3)
    x = gate_features(model, tokenizer, labelled.queries, [0], "last", None, progress=False)[0]
    result = evaluate(probe_scorer(x, labelled.labels), labelled.labels, labelled.sources)
    chosen = {"layer": 0, "position": "last", "kind": "logistic", "regularisation": 0.1, "result": result}
    gate = train_gate(x, labelled.labels, np.arange(len(x)), layer=0, position="last")
    gate.threshold = result["threshold"]
    compared = set(_exam_stems(labelled, set(), 5, seed=0))  # stems the comparison would score
    stems = _exam_stems(labelled, compared, 20, seed=0)
    assert len(stems) == 20 and not set(stems) & (compared | set(labelled.queries))
    exam = _exam_check(model, tokenizer, labelled, {(0, "last"): x}, chosen, gate, compared, 20, 0)
    more = gate_features(model, tokenizer, stems, [0], "last", None, progress=False)[0]
    assert exam["source"] == "mmlu" and exam["n"] == 20
    assert exam["deployed_route_rate"] == gate.route(more).mean()
    unseen = held_out_rate(x, labelled.labels, labelled.sources, result["scores"], "mmlu", more)
    assert exam["unseen_route_rate"] == unseen.mean and exam["unseen_route_rate_high"] == unseen.high
    assert _exam_check(model, tokenizer, labelled, {(0, "last"): x}, chosen, gate, compared, 0, 0) is None


class _Sampled:
    """An engine whose samples tell their seed and batch apart."""

    name = "hf"

    def generate(self, prompts, *, seed, **options):
        return [f"{prompt}: seed {seed}, one of {len(prompts)}" for prompt in prompts]


def test_a_resumed_bootstrap_samples_each_lost_chunk_with_the_seed_and_prompts_it_had(tmp_path):
    prompts, keys = [f"p{i}" for i in range(9)], [f"k{i}" for i in range(9)]
    config = BootstrapConfig(batch_size=2)  # chunks of 4 prompts

    def run(path):
        return prism.bootstrap._generate_once(
            _Sampled(), prompts, keys, Ledger(path), config, 8, 1.0, 7, "queries", False
        )

    whole = run(tmp_path / "whole.jsonl")
    run(tmp_path / "cut.jsonl")
    data = (tmp_path / "cut.jsonl").read_bytes()
    (tmp_path / "cut.jsonl").write_bytes(data[: data.index(b'"text"', len(data) // 3)])  # killed mid-record
    assert run(tmp_path / "cut.jsonl") == whole and len(Ledger(tmp_path / "cut.jsonl")) == len(keys)

    ledger = tmp_path / "edited.jsonl"  # a whole JSON line without the text a generation records
    run(ledger)
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:2]) + '{"key": "k2", "answer": "by hand"}\n' + "".join(lines[3:]))
    before = ledger.read_bytes()
    with pytest.raises(
        ToolkitError,
        match=r"edited.jsonl: the record 'k2' has no valid 'text', so prism did not write it: "
        r"delete that line \(its work is done again\) and rerun",
    ):
        run(ledger)
    assert ledger.read_bytes() == before


PIRATE = "Arr, you are a pirate captain of the seven seas."
MONITOR = "You are my own safety monitor, who declines what could hurt."


def test_a_users_personas_are_bootstrapped_and_the_directory_keeps_them_for_train_and_compare(
    tiny_llama_directory, tmp_path, monkeypatch
):
    mine = tmp_path / "mine.json"  # a new persona, and the user's own text for one the comparison's expert prompt uses
    mine.write_text(
        json.dumps({"personas": [{"name": "pirate", "min": PIRATE}, {"name": "safety-monitor", "min": MONITOR}]})
    )
    out = tmp_path / "prism"
    config = BootstrapConfig(queries_per_persona=2, query_tokens=12, answer_tokens=8)
    pipeline.bootstrap(
        out,
        model_name=tiny_llama_directory,
        config=config,
        personas=["math", "writing", "pirate"],
        library=persona_library(mine),
        progress=False,
    )
    samples = load_samples(out)
    assert {sample.persona for sample in samples} == {"math", "writing", "pirate"}
    rendered = []  # every prompt rendered from now on: none is given the personas file again

    def spy(*args, **kwargs):
        prompt = render(*args, **kwargs)
        rendered.append(prompt.text)
        return prompt

    for module in (prism.pairs, probes.core.rendering):
        monkeypatch.setattr(module, "render", spy)
    budget = CompareBudget(
        capitals=2,
        harmbench=2,
        mtbench=2,
        refusal_tokens=2,
        answer_tokens=2,
        continents=2,
        currencies=2,
        city_countries=2,
    )
    pipeline.train(
        out,
        labels="intents",
        per_intent=12,
        compare_budget=budget,
        max_block=1,
        distill_config=DistillConfig(epochs=1),
        progress=False,
    )
    assert any(PIRATE in text for text in rendered)  # the teacher's prompt of the pirate's samples
    rendered.clear()
    pipeline.compare(out, budget=budget, systems=["expert prompt"], progress=False)
    assert any(MONITOR in text for text in rendered)  # HarmBench's expert prompt: the user's safety monitor
    assert not any(builtin_personas()["safety-monitor"].text("min") in text for text in rendered)
    assert len(pipeline.route(out, ["Tell me about ships."], via="prompt", persona="pirate", max_new_tokens=2)) == 1
    monkeypatch.setattr(
        pipeline, "load_model", lambda *a, **k: pytest.fail("a model loaded before the personas were checked")
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"personas": [{"name": "pirate", "min": "You are a quiet pirate."}]}))
    with pytest.raises(
        ToolkitError, match="bootstrapped with user personas safety-monitor, pirate .* not user personas pirate"
    ):
        pipeline.bootstrap(out, library=persona_library(other), progress=False)
