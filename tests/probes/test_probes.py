"""Linear probes, splits, controls, persona directions and saved artefacts."""

import json

import numpy as np
import pytest
import torch

from prism.cli import main
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_tensors
from probes.core.personas import persona_library
from probes.core.prompts import Condition
from probes.core.stats import bootstrap_auc
from probes.directions import cosine_estimate, norm_estimate, persona_differences, shared_structure
from probes.intents import intent_queries
from probes.linear import (
    PROBE_KINDS,
    fit_probe,
    load_probe,
    random_direction_control,
    save_probe,
    score_probe,
    shuffled_label_control,
)
from probes.splits import balance, held_out_split, in_distribution_split
from probes.store import ActivationStore
from probes.study import run_probe_study


def _planted(n=400, d=64, strength=2.0, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    y = np.array(["no", "yes"])[rng.integers(0, 2, n)]
    x = rng.standard_normal((n, d)) + np.outer((y == "yes") * strength, direction) + 3.0  # off-centre, like residuals
    return x, y, direction


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_probes_recover_a_planted_direction(kind):
    x, y, direction = _planted()
    probe = fit_probe(kind, x[:300], y[:300])
    assert abs(probe.direction @ direction) > 0.8
    assert probe.direction @ direction > 0  # oriented towards classes[1] = "yes"
    score = score_probe(probe, x[300:], y[300:])
    assert score.auc.mean > 0.85 and score.auc.low > 0.75 and score.accuracy.mean > 0.7 and score.n == 100
    assert score.to_dict() == {**score.accuracy.columns("accuracy"), **score.auc.columns("auc"), "n": 100}
    assert list(score.to_dict()) == ["accuracy", "accuracy_low", "accuracy_high", "auc", "auc_low", "auc_high", "n"]


def test_multiclass_probes_separate_three_planted_classes():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 64)) * 2
    y = np.array(list("abc"))[rng.integers(0, 3, 300)]
    x = rng.standard_normal((300, 64)) + centres[np.searchsorted(list("abc"), y)]
    for kind in PROBE_KINDS:
        probe = fit_probe(kind, x[:200], y[:200])
        assert probe.weights.shape == (3, 64)
        assert score_probe(probe, x[200:], y[200:]).accuracy.mean > 0.85


def test_controls_sit_at_chance():
    x, y, _ = _planted(d=256, seed=2)
    shuffled = shuffled_label_control("logistic", x[:300], y[:300], x[300:], y[300:], seed=0)
    assert shuffled.auc.low < 0.5 < shuffled.auc.high
    chance = [random_direction_control(x[:300], y[:300], x[300:], y[300:], seed=s).auc.mean for s in range(20)]
    assert abs(np.mean(chance) - 0.5) < 0.08  # a random direction barely sees a 1-d signal in 256-d
    noise = np.random.default_rng(3).standard_normal((300, 32))
    labels = np.array(["a", "b"])[np.random.default_rng(4).integers(0, 2, 300)]
    assert score_probe(fit_probe("logistic", noise[:200], labels[:200]), noise[200:], labels[200:]).auc.low < 0.5


def test_held_out_splits_never_share_a_group_and_keep_every_class_on_both_sides():
    queries = intent_queries(60, seed=0)
    labels = [q.intent for q in queries]
    groups = [q.group for q in queries]
    for seed in range(5):
        split = held_out_split(labels, groups, seed=seed)
        train_groups = {groups[i] for i in split.train}
        test_groups = {groups[i] for i in split.test}
        assert not train_groups & test_groups and test_groups == set(split.test_groups)
        assert (
            {labels[i] for i in split.train}
            == {labels[i] for i in split.test}
            == {"knowledge", "generation", "harmful"}
        )
        split.check_disjoint(groups)
        inside = in_distribution_split(labels, split.train, seed=seed)
        assert set(inside.train) | set(inside.test) == set(split.train) and not set(inside.train) & set(inside.test)
        balanced = balance(split.test, labels, seed=seed)
        counts = {label: sum(labels[i] == label for i in balanced) for label in set(labels)}
        assert len(set(counts.values())) == 1
    with pytest.raises(ToolkitError, match="single group"):
        held_out_split(["a", "a", "b", "b"], ["g1", "g1", "g2", "g3"])


def test_saved_directions_and_probes_reload_bit_exactly(tmp_path):
    directions = torch.randn(5, 32, dtype=torch.float64)
    metadata = {
        "model": "m",
        "hook": "blocks.3.hook_out",
        "layers": [0, 1, 2, 3, 4],
        "positions": "last",
        "data": "abc",
    }
    path = save_tensors(tmp_path / "d.safetensors", {"directions": directions}, metadata)
    tensors, meta = load_tensors(path)
    made_by = meta.pop("provenance")  # what made the file: versions, command line, the model when one was loaded
    assert torch.equal(tensors["directions"], directions) and meta == metadata
    assert made_by["packages"]["torch"] == torch.__version__ and made_by["command"]
    first = path.read_bytes()
    save_tensors(path, {"directions": directions}, dict(reversed(list(metadata.items()))))
    assert path.read_bytes() == first  # the same file whatever the metadata order
    x, y, _ = _planted()
    probe = fit_probe("logistic", x, y)
    save_probe(tmp_path / "p.safetensors", probe, {"layer": 3})
    again, meta = load_probe(tmp_path / "p.safetensors")
    assert np.array_equal(again.weights, probe.weights) and np.array_equal(again.bias, probe.bias)
    assert again.classes == probe.classes and meta["layer"] == 3
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ToolkitError, match="not a readable safetensors"):
        load_tensors(tmp_path / "bad.safetensors")


def test_persona_direction_statistics():
    rng = np.random.default_rng(5)
    shared = rng.standard_normal(64)
    base = rng.standard_normal((40, 64))
    one = base + shared + 0.1 * rng.standard_normal((40, 64))
    two = base + 2 * shared + 0.1 * rng.standard_normal((40, 64))
    d1, d2 = persona_differences(one, base), persona_differences(two, base)
    norm = norm_estimate(d1)
    assert norm.low <= np.linalg.norm(shared) <= norm.high * 1.05
    assert cosine_estimate(d1, d2).low > 0.95
    same = shared_structure({"a": d1.mean(0), "b": d2.mean(0)})
    assert same.mean_pairwise_cosine > 0.95 and same.first_component_share > 0.95
    basis = np.eye(4)
    apart = shared_structure({str(i): basis[i] for i in range(4)})
    assert abs(apart.mean_pairwise_cosine) < 1e-9 and apart.first_component_share == pytest.approx(0.25)
    with pytest.raises(ToolkitError, match="pair query by query"):
        persona_differences(one[:3], base)


def test_probe_study_end_to_end_on_a_tiny_model(tiny, tmp_path):
    out = tmp_path / "probe"
    mine = tmp_path / "mine.json"  # a user's persona, named next to a built-in one
    mine.write_text(
        json.dumps(
            {
                "personas": [
                    {
                        "name": "pirate",
                        "min": "Arr, you are a pirate captain.",
                        "long": "Arr, you are a pirate captain who has sailed every sea.",
                    }
                ]
            }
        )
    )
    library = persona_library(mine)
    summary = run_probe_study(
        out,
        *tiny,
        per_intent=24,
        personas=["math", "pirate"],
        library=library,
        persona_lengths=["min", "long"],
        persona_queries=6,
        kinds=["logistic", "diff-means"],
        progress=False,
    )
    assert set(summary.earliest) == {
        f"{t}/{p}" for t in ("intent", "knowledge-vs-generation", "harmful-vs-benign") for p in ("last", "mean")
    }
    tensors, meta = load_tensors(out / "directions" / "intent_knowledge-vs-generation_mean.safetensors")
    assert tensors["directions"].shape == (4, 64)  # embeddings + 3 blocks
    assert meta["layers"] == [-1, 0, 1, 2] and meta["positions"] == "mean" and meta["data"] == summary.data
    assert len(meta["held_out_auc"]) == 4 and meta["model"]
    persona, meta = load_tensors(out / "directions" / "persona_last.safetensors")
    assert set(persona) == {"math/min", "math/long", "pirate/min", "pirate/long"}
    recorded = ActivationStore(out / "activations" / "personas" / f"{Condition('pirate', 'long').slug}-last")
    assert all("pirate captain who has sailed every sea" in prompt["text"] for prompt in recorded.prompts)
    report = (out / "report.md").read_text()
    assert "Where intent becomes decodable" in report and "One direction or many?" in report
    for name in ("probe_intent_last.png", "projection_intents.png", "pca_early_late.png", "cosine_personas.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    first = (out / "directions" / "persona_last.safetensors").read_bytes()
    run_probe_study(
        out,
        *tiny,
        per_intent=24,
        personas=["math", "pirate"],
        library=library,
        persona_lengths=["min", "long"],
        persona_queries=6,
        kinds=["logistic", "diff-means"],
        progress=False,
    )
    assert (out / "directions" / "persona_last.safetensors").read_bytes() == first  # resumed, same result


def test_probe_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["probe", "--layers", "0,x", "--out", str(tmp_path)]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["probe", "--probes", "svm", "--out", str(tmp_path)]) == 2
    assert "unknown probe 'svm'" in capsys.readouterr().err


def test_bootstrap_auc_matches_sklearn_at_its_point():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    positive = rng.random(60) < 0.4
    scores = positive * 0.8 + rng.normal(size=60)
    auc = bootstrap_auc(positive, scores, n_resamples=300)
    assert auc.mean == pytest.approx(roc_auc_score(positive, scores)) and auc.low < auc.mean < auc.high and auc.n == 60
