"""Interventions on tiny random models: steering, ablation, patching, logit lens."""

import json

import numpy as np
import pytest
import torch

import probes.core.rendering
from interventions.causal import GROUPS, margins, paired_items, patching_sweep, persona_attention
from interventions.hooks import AblateDirection, AddDirection, PatchActivations
from interventions.intervene import run_interventions
from prism.cli import main
from probes.core.batching import right_pad
from probes.core.correlation import bootstrap_correlation
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, render
from probes.passes import HookDidNotFire
from probes.readouts import capture_residuals, logits_at, residual_norms


@pytest.fixture(scope="module")
def batch(tiny):
    model, tokenizer = tiny
    tokens = torch.tensor(
        [
            tokenizer("The capital of France is Paris, a city")["input_ids"][:8],
            tokenizer("Write a short poem about the sea and")["input_ids"][:8],
        ]
    )
    return model, tokens


def _logits(model, tokens):
    with torch.inference_mode():
        return model(tokens).float()


def test_adding_then_subtracting_a_direction_restores_the_logits(batch):
    model, tokens = batch
    direction = torch.randn(model.cfg.d_model)
    norms = residual_norms(model, tokens)
    clean = _logits(model, tokens)
    with AddDirection(model, direction, scale=3.0, layers=[1], norms=norms) as steer:
        steered = _logits(model, tokens)
    assert (steered - clean).abs().max() > 1e-3  # it did something
    with (
        AddDirection(model, direction, scale=3.0, layers=[1], norms=norms),
        AddDirection(model, direction, scale=-3.0, layers=[1], norms=norms),
    ):
        restored = _logits(model, tokens)
    assert torch.allclose(restored, clean, atol=1e-4)
    record = steer.record()
    assert record["hooks"]["blocks.1.hook_out"] == {"calls": 1, "positions_changed": tokens.numel()}


def test_steering_only_the_chosen_positions(batch):
    model, tokens = batch
    direction = torch.randn(model.cfg.d_model)
    clean = capture_residuals(model, tokens, [0])[0]
    with AddDirection(model, direction, scale=1.0, layers=[0], positions=[-1]) as steer:
        steered = capture_residuals(model, tokens, [0])[0]
    changed = (steered - clean).abs().amax(dim=-1) > 1e-6
    assert changed[:, -1].all() and not changed[:, :-1].any()
    assert steer.record()["hooks"]["blocks.0.hook_out"]["positions_changed"] == 2


def test_ablation_leaves_activations_orthogonal_to_the_direction(batch):
    model, tokens = batch
    direction = torch.randn(model.cfg.d_model)
    unit = direction / direction.norm()
    with AblateDirection(model, direction, layers=[0, 2]):
        inside = capture_residuals(model, tokens, [0, 2])
    for layer in (0, 2):
        assert (inside[layer] @ unit).abs().max() < 1e-4
    before = capture_residuals(model, tokens, [0])[0]
    assert (before @ unit).abs().max() > 1e-2


def test_patching_a_run_into_itself_changes_nothing(batch):
    model, tokens = batch
    source = capture_residuals(model, tokens, [0, 1, 2])
    pairs = [[(t, t) for t in range(tokens.shape[1])] for _ in range(tokens.shape[0])]
    clean = _logits(model, tokens)
    with PatchActivations(model, source, pairs):
        patched = _logits(model, tokens)
    assert torch.allclose(patched, clean, atol=1e-5)


def test_patching_everything_from_the_source_reproduces_its_logits(batch):
    model, tokens = batch
    source_tokens = tokens.flip(0)  # the other prompt of the batch as the source
    source = capture_residuals(model, source_tokens, [0])
    pairs = [[(t, t) for t in range(tokens.shape[1])] for _ in range(tokens.shape[0])]
    with PatchActivations(model, source, pairs) as patch:
        patched = _logits(model, tokens)
    assert torch.allclose(patched, _logits(model, source_tokens), atol=1e-4)
    assert patch.record()["hooks"]["blocks.0.hook_out"]["positions_changed"] == tokens.numel()


def test_patching_lines_up_sequences_of_different_lengths(batch):
    model, tokens = batch
    longer = torch.cat([tokens[:, :3], tokens], dim=1)  # three extra tokens in front, like a persona
    source = capture_residuals(model, tokens, [2])
    pairs = [[(3 + t, t) for t in range(tokens.shape[1])] for _ in range(2)]  # target position <- source position
    with PatchActivations(model, source, pairs):
        patched = capture_residuals(model, longer, [2])[2]
    assert torch.allclose(patched[:, 3:], source[2], atol=1e-6)


def test_a_hook_that_never_fires_raises_and_bad_requests_are_one_line(batch):
    model, tokens = batch
    with pytest.raises(HookDidNotFire, match="never fired"):
        with AddDirection(model, torch.randn(model.cfg.d_model), scale=1.0, layers=[1]):
            pass  # the model is never run
    with pytest.raises(ToolkitError, match="does not exist"):
        AddDirection(model, torch.randn(model.cfg.d_model), scale=1.0, layers=[7])
    with pytest.raises(ToolkitError, match="residual is"):
        AblateDirection(model, torch.randn(5), layers=[0])
    with pytest.raises(ToolkitError, match="unknown positions"):
        AddDirection(model, torch.randn(model.cfg.d_model), scale=1.0, layers=[0], positions="middle")
    clean = _logits(model, tokens)
    with pytest.raises(RuntimeError):
        with AddDirection(model, torch.randn(model.cfg.d_model), scale=1.0, layers=[0]):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, tokens), clean)  # hooks were removed on the way out


def test_logits_at_fires_the_bridges_hooks(batch):  # across architectures: tests/probes/test_readouts.py
    model, tokens = batch
    full = _logits(model, tokens)
    assert torch.allclose(logits_at(model, tokens, [3, 7]), full[torch.arange(2), torch.tensor([3, 7])], atol=1e-4)
    direction = torch.randn(model.cfg.d_model)
    with AddDirection(model, direction, scale=2.0, layers=[1]):
        steered_full = _logits(model, tokens)
    with AddDirection(model, direction, scale=2.0, layers=[1]):
        steered = logits_at(model, tokens, [7, 7])
    assert torch.allclose(steered, steered_full[:, 7], atol=1e-4)  # hooks fire on this path too


def test_intervene_writes_tables_figures_and_report(tiny, tmp_path):
    out = tmp_path / "intervene"
    summary = run_interventions(
        out,
        *tiny,
        n_items=8,
        layers=[0, 2],
        multiples=(0.0, 1.0),
        refusal_items=4,
        refusal_multiples=(1.0,),
        progress=False,
    )
    patching = json.loads((out / "patching.json").read_text())
    assert {(r["layer"], r["group"]) for r in patching} == {
        (l, g) for l in (0, 2) for g in ("query", "after_query", "final")
    }
    final = next(r for r in patching if r["layer"] == 2 and r["group"] == "final")
    assert final["fraction"] == pytest.approx(1.0, abs=1e-3)  # the last block's final token decides the logits
    steering = json.loads((out / "steering.json").read_text())
    assert all(r["fraction"] == 0 for r in steering if r["multiple"] == 0.0)
    assert (
        summary.n > 0
        and summary.report == out / "report.md"
        and summary.report.read_text().startswith("# Why personas hurt")
    )
    attention = json.loads((out / "attention.json").read_text())
    assert [r["layer"] for r in attention] == [0, 1, 2] and all(0 < r["attention"] < 1 for r in attention)
    refusal = json.loads((out / "refusal.json").read_text())
    assert [r["condition"] for r in refusal] == [
        "no persona",
        "persona prompt",
        "persona direction",
        "random direction",
    ]
    assert all(r["n"] == 4 for r in refusal)
    for name in (
        "patching_heatmap",
        "steering_dose_response",
        "ablation",
        "logit_lens",
        "attention",
        "refusal_steering",
    ):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")


@pytest.fixture(scope="module")
def paired(tiny):
    model, tokenizer = tiny
    items = stratified_sample(load_dataset("capitals"), 6, seed=0)
    return model, tokenizer, paired_items(tokenizer, items, Condition("random", "long", "system"))


def test_patching_after_a_cached_prefix_equals_patching_whole_prompts(paired):
    model, tokenizer, items = paired
    assert len({len(p.target) for p in items}) > 1  # prompts of different lengths share a batch
    sweep = patching_sweep(model, tokenizer, items, [0, 2], batch_size=4, progress=False)
    for layer in (0, 2):
        for group in GROUPS:
            expected = []
            for start in range(0, len(items), 4):
                chosen = items[start : start + 4]
                source = capture_residuals(
                    model, right_pad([p.source for p in chosen], tokenizer.pad_token_id), [layer]
                )
                with PatchActivations(model, source, [p.pairs(group) for p in chosen]):
                    expected.append(margins(model, tokenizer, [p.target for p in chosen], chosen))
            assert np.allclose(sweep[(layer, group)], np.concatenate(expected), atol=1e-4), (layer, group)


def test_attention_to_the_persona_is_a_share_of_the_final_positions_attention(paired):
    from dataclasses import replace

    model, tokenizer, items = paired
    masses = persona_attention(model, tokenizer, items, batch_size=4)
    assert masses.shape == (model.cfg.n_layers, len(items))
    assert (masses > 0).all() and (masses < 1).all()
    everything = [replace(p, persona_positions=list(range(len(p.target)))) for p in items]
    assert np.allclose(persona_attention(model, tokenizer, everything, batch_size=4), 1.0, atol=1e-5)


def test_bootstrap_correlation_matches_numpy_and_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = 0.6 * x + rng.normal(size=60)
    pearson = bootstrap_correlation(x, y)
    assert pearson.mean == pytest.approx(np.corrcoef(x, y)[0, 1]) and pearson.low < pearson.mean < pearson.high
    assert pearson.significant
    assert bootstrap_correlation(x, y, method="spearman").mean == pytest.approx(spearmanr(x, y).statistic)
    assert np.isnan(bootstrap_correlation(x, np.ones(60)).mean)  # undefined for a constant


def test_mean_ablation_sets_the_projection_to_the_baseline(batch):
    model, tokens = batch
    direction = torch.randn(model.cfg.d_model)
    unit = direction / direction.norm()
    before = capture_residuals(model, tokens, [1])[1]
    with AblateDirection(model, direction, layers=[1], baseline={1: 2.5}, positions=[-1]):
        after = capture_residuals(model, tokens, [1])[1]
    assert torch.allclose(after[:, -1] @ unit, torch.full((2,), 2.5), atol=1e-4)
    residue = (after[:, -1] - before[:, -1]) - ((after[:, -1] - before[:, -1]) @ unit)[:, None] * unit
    assert residue.abs().max() < 1e-4  # only the component along the direction moved
    assert torch.equal(after[:, :-1], before[:, :-1])


def test_left_padded_margins_equal_right_padded_and_reach_the_answer_position(paired):
    model, tokenizer, items = paired
    sources = [p.source for p in items]
    assert np.allclose(
        margins(model, tokenizer, sources, items),
        margins(model, tokenizer, sources, items, left_padded=True),
        atol=1e-4,
    )
    direction = torch.randn(model.cfg.d_model)
    with AddDirection(model, direction, scale=5.0, layers=[2], positions=[-1]):
        steered = margins(model, tokenizer, sources, items, left_padded=True)
    for row, p in enumerate(items):  # each row alone, steered at its own last token
        with AddDirection(model, direction, scale=5.0, layers=[2], positions=[-1]):
            assert np.isclose(margins(model, tokenizer, [p.source], [p])[0], steered[row], atol=1e-4)


def test_intervene_takes_a_users_persona_from_a_personas_file(tiny_llama_directory, tmp_path, monkeypatch):
    mine = tmp_path / "mine.json"
    mine.write_text(
        json.dumps({"personas": [{"name": "pirate", "long": "Arr, you are a pirate captain of the seven seas."}]})
    )
    rendered = []

    def spy(*args, **kwargs):
        prompt = render(*args, **kwargs)
        rendered.append(prompt.text)
        return prompt

    monkeypatch.setattr(probes.core.rendering, "render", spy)  # every item the command renders
    out = tmp_path / "intervene"
    assert (
        main(
            [
                "intervene",
                "--model",
                tiny_llama_directory,
                "--persona",
                "pirate",
                "--personas-file",
                str(mine),
                "-n",
                "8",
                "--layers",
                "0",
                "--refusal-items",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["persona"].startswith("pirate")
    with_persona = [text for text in rendered if "pirate captain of the seven seas" in text]
    assert (
        with_persona and len(with_persona) == len(rendered) // 2
    )  # the capital items and refusal requests, with and without
