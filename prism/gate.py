"""The PRISM gate as a probe: a read-out of an early block's residual stream that decides, per
query, between the base model and the persona path.

The gate reads the no-persona prompt of a query after block ``layer`` (``blocks.{layer}.hook_out``)
at the last prompt token (``last``), as the mean over all the prompt's tokens (``mean``: the
chat template's fixed tokens included, so it also carries the query's length), or as the mean
over the query's own tokens (``query``: the template's fixed tokens before and after the query,
counted once from the plain rendering, are left out). ``sweep`` scores blocks 0..k and every
read position on a held-out split (whole label groups held out), with a prompt-length-only, a
shuffled-label and a random-direction control; ``train_gate`` fits a gate, ``fit_gate`` also
calibrates its threshold on the held-out side. ``prism.unseen`` chooses the read-out.

Two kinds: ``logistic`` (a linear probe; the project's default) and ``mlp`` (one hidden layer,
the paper's small learned gate, for comparison). Both are saved as safetensors with their
metadata and evaluate in torch, so the gate can run inside the model's forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from tqdm.auto import tqdm

from prism.baselines import balanced_threshold
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_tensors
from probes.core.prompts import Condition, encode, render, token_groups
from probes.linear import fit_probe, random_direction_control, score_probe, shuffled_label_control
from probes.passes import read_activations, residual_hooks
from probes.recording import record_activations
from probes.splits import Split, held_out_split, in_distribution_split

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

READ_POSITIONS = ("last", "mean", "query")
GATE_KINDS = ("logistic", "mlp")
GATE_FILE_KIND = "prism-gate"


@dataclass
class Gate:
    """The PRISM gate: p(persona path | query) = sigmoid(f(x)), x the residual after ``layer`` at ``position``.

    A query is routed to the persona path when p >= ``threshold``. ``logit``, ``probability`` and ``route`` take
    features ``[n, d_model]`` (computed in float64); ``hook`` names the block output the gate reads.

    Args:
        kind: ``logistic`` (a linear probe) or ``mlp`` (one hidden layer of 64 ReLU units on standardised features).
        layer: the block whose output (``blocks.{layer}.hook_out``) the gate reads.
        position: ``last`` (last prompt token), ``mean`` (mean over the prompt's tokens) or ``query`` (mean over
            the query's own tokens).
        tensors: the parameters: ``weight`` ``[d]`` and scalar ``bias`` for the logistic gate; ``mean``, ``scale``,
            ``w0``, ``b0``, ``w1``, ``b1`` for the MLP.
        threshold: the probability at and above which a query is routed.
        metadata: facts saved with the gate (model, labels, split, held-out report).
        template: the chat template's fixed tokens before and after the query, left out by the ``query`` read-out.
    """

    kind: str
    layer: int
    position: str
    tensors: dict[str, torch.Tensor]
    threshold: float = 0.5
    metadata: dict = field(default_factory=dict)
    template: tuple[int, int] = (0, 0)  # fixed template tokens before and after the query ("query" read-out)

    def logit(self, x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, " n"]:
        x = x.to(torch.float64)
        t = {name: value.to(device=x.device, dtype=torch.float64) for name, value in self.tensors.items()}
        if self.kind == "logistic":
            return x @ t["weight"] + t["bias"]
        hidden = torch.relu(((x - t["mean"]) / t["scale"]) @ t["w0"] + t["b0"])
        return (hidden @ t["w1"] + t["b1"]).squeeze(-1)

    def probability(self, x) -> np.ndarray:
        return torch.sigmoid(self.logit(torch.as_tensor(np.asarray(x)))).cpu().numpy()

    def route(self, x) -> np.ndarray:
        return self.probability(x) >= self.threshold

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_out"

    @property
    def n_parameters(self) -> int:
        return int(sum(value.numel() for value in self.tensors.values()))

    def save(self, path: str | Path) -> Path:
        """Write the gate (tensors, settings and metadata) as one safetensors file, atomically.

        Args:
            path: the ``.safetensors`` file to write (its folder is created).

        Returns:
            ``path``, as a ``Path``.
        """
        return save_tensors(
            path,
            self.tensors,
            {
                **self.metadata,
                "file_kind": GATE_FILE_KIND,
                "kind": self.kind,
                "layer": self.layer,
                "position": self.position,
                "threshold": self.threshold,
                "template": list(self.template),
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> "Gate":
        """Read a gate written by ``Gate.save``.

        Args:
            path: the gate's ``.safetensors`` file.

        Returns:
            the ``Gate``, with its threshold, template and metadata.

        Raises:
            ToolkitError: no readable toolkit file at ``path``, a file that is not a gate, or a damaged gate file.
        """
        tensors, metadata = load_tensors(path)
        if metadata.get("file_kind") != GATE_FILE_KIND:
            raise ToolkitError(
                f"{path} is not a PRISM gate (file kind {metadata.get('file_kind')!r}): train one with `prism train`"
            )
        needed = {"logistic": {"weight", "bias"}, "mlp": {"mean", "scale", "w0", "b0", "w1", "b1"}}.get(
            metadata["kind"]
        )
        if needed is None or not needed <= set(tensors):
            raise ToolkitError(
                f"{path} is a damaged gate file (kind {metadata.get('kind')!r}, tensors {sorted(tensors)})"
            )
        extra = {
            key: value
            for key, value in metadata.items()
            if key not in ("file_kind", "kind", "layer", "position", "threshold", "template")
        }
        return cls(
            metadata["kind"],
            int(metadata["layer"]),
            metadata["position"],
            tensors,
            float(metadata["threshold"]),
            extra,
            tuple(metadata.get("template", (0, 0))),
        )


@dataclass(frozen=True)
class LabelledPrompts:
    """Queries with a 0/1 route label (1 = persona path), the group a held-out split moves whole, the label source
    (``intents`` or ``bootstrap (both)``) and each query's source (held out whole by ``prism.unseen``)."""

    queries: list[str]
    labels: np.ndarray
    groups: list[str]
    source: str
    sources: Sequence[str] = ()


def gate_features(
    model: TransformerBridge,
    tokenizer,
    queries: Sequence[str],
    layers: Sequence[int],
    position: str,
    out: str | Path | None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, np.ndarray]:
    """Residual after each of ``layers`` at ``position`` for the no-persona prompt of every query: layer -> [n, d].
    Each pass stops after the deepest of ``layers``; with ``out`` the activations go to a resumable store under it
    (``record_activations``), with ``None`` they stay in memory (``read_activations``): the same numbers."""
    if position not in READ_POSITIONS:
        raise ToolkitError(f"unknown read position {position!r}: use one of {', '.join(READ_POSITIONS)}")
    hooks = residual_hooks(model, layers)  # one line for a block the model lacks
    prompts = [render(tokenizer, query, Condition("none")) for query in queries]
    positions = "all" if position == "query" else position
    store = (
        read_activations(model, tokenizer, prompts, hooks=hooks, positions=positions, batch_size=batch_size)
        if out is None
        else record_activations(
            model,
            tokenizer,
            prompts,
            Path(out) / position,
            hooks=hooks,
            positions=positions,
            batch_size=batch_size,
            progress=progress,
            overwrite=True,
        )
    )
    if position != "query":
        return {layer: store.load(hook).double().numpy() for layer, hook in zip(layers, hooks)}
    before, after = template_tokens(tokenizer)
    offsets = store.offsets().tolist()
    features = {}
    for layer, hook in zip(layers, hooks):
        rows = store.load(hook).double()
        features[layer] = torch.stack(
            [
                rows[start + before : max(start + before + 1, stop - after)].mean(dim=0)
                for start, stop in zip(offsets[:-1], offsets[1:])
            ]
        ).numpy()
    return features


def template_tokens(tokenizer) -> tuple[int, int]:
    """How many tokens the plain chat rendering puts before and after a query (fixed for a
    tokenizer and template; checked on two queries)."""

    counts = set()
    for probe_query in ("What is the capital of France?", "Write a short poem about the sea, please."):
        prompt = render(tokenizer, probe_query, Condition("none"))
        query = token_groups(tokenizer, prompt)["query"]
        counts.add((query[0], len(encode(tokenizer, prompt)) - query[-1] - 1))
    if len(counts) != 1:
        raise ToolkitError(
            "this chat template does not wrap queries in fixed tokens: use the 'last' or 'mean' read-out"
        )
    return counts.pop()


def split_for(labelled: LabelledPrompts, seed: int = 0) -> tuple[Split, str]:
    """A held-out split by groups when each label has two or more groups, else a random one."""
    labels = [str(label) for label in labelled.labels]
    try:
        return held_out_split(labels, labelled.groups, seed=seed), "held-out groups"
    except ToolkitError:
        return in_distribution_split(labels, np.arange(len(labels)), seed=seed), "random (a label has a single group)"


def sweep(
    features: dict[tuple[int, str], np.ndarray],
    labelled: LabelledPrompts,
    split: Split,
    *,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Held-out AUC of a logistic gate at every (layer, position), with both controls; with
    ``lengths``, first a row (layer -1, position "length only") for the prompt length alone."""
    y = np.array([str(label) for label in labelled.labels])
    train = _oversampled(split.train, labelled.labels, seed)
    rows = []
    if lengths is not None:  # a probe that sees nothing but the prompt's token count
        length = np.log(np.asarray(lengths, dtype=float))[:, None]
        only_length = score_probe(
            fit_probe("logistic", length[train], y[train], seed=seed), length[split.test], y[split.test], seed=seed
        )
        rows.append(
            {
                "layer": -1,
                "position": "length only",
                **only_length.auc.columns("auc"),
                "accuracy": only_length.accuracy.mean,
                "shuffled_auc": float("nan"),
                "random_auc": float("nan"),
                "n_train": len(train),
                "n_test": len(split.test),
            }
        )
    for (layer, position), x in tqdm(
        sorted(features.items()), desc="gate sweep", unit="read-out", disable=not progress
    ):
        probe = fit_probe("logistic", x[train], y[train], seed=seed)
        score = score_probe(probe, x[split.test], y[split.test], seed=seed)
        shuffled = shuffled_label_control("logistic", x[train], y[train], x[split.test], y[split.test], seed=seed)
        random = random_direction_control(x[train], y[train], x[split.test], y[split.test], seed=seed)
        rows.append(
            {
                "layer": layer,
                "position": position,
                **score.auc.columns("auc"),
                "accuracy": score.accuracy.mean,
                "shuffled_auc": shuffled.auc.mean,
                "random_auc": random.auc.mean,
                "n_train": len(train),
                "n_test": len(split.test),
            }
        )
    return rows


def choose(rows: Sequence[dict]) -> dict:
    """The read-out with the best held-out AUC; ties (within 0.005) go to the earlier block, then 'last'."""
    if not rows:
        raise ToolkitError("no gate read-out to choose from: check --layer and --position")
    best = max(row["auc"] for row in rows)
    near = [row for row in rows if row["auc"] >= best - 0.005]
    return min(near, key=lambda row: (row["layer"], READ_POSITIONS.index(row["position"])))


def train_gate(
    x: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    *,
    layer: int,
    position: str,
    kind: str = "logistic",
    regularisation: float = 0.1,
    seed: int = 0,
    metadata: dict | None = None,
    template: tuple[int, int] = (0, 0),
) -> Gate:
    """Fit a gate on the queries at ``indices`` (minority label oversampled); its threshold stays 0.5.

    Args:
        x: the read-out features ``[n, d]`` of every query (``gate_features``).
        labels: 0/1 route labels ``[n]`` (1 = persona path).
        indices: the training queries.
        layer, position: the block and read position the features came from (saved with the gate).
        kind: ``logistic`` or ``mlp``.
        regularisation: the logistic gate's inverse L2 strength on standardised features (``fit_probe``).
        seed, metadata: oversampling and fitting seed; facts to keep with the gate.
        template: the template's fixed tokens before and after the query (``template_tokens``), for ``query``.

    Raises:
        ToolkitError: an unknown kind, or training queries with a single label.
    """
    if kind not in GATE_KINDS:
        raise ToolkitError(f"unknown gate kind {kind!r}: use one of {', '.join(GATE_KINDS)}")
    labels = np.asarray(labels).astype(int)
    train = _oversampled(np.asarray(indices), labels, seed)
    if kind == "logistic":
        probe = fit_probe(
            "logistic", x[train], [str(v) for v in labels[train]], regularisation=regularisation, seed=seed
        )
        tensors = {"weight": torch.as_tensor(probe.weights[0]), "bias": torch.as_tensor(probe.bias[:1]).reshape(())}
    else:
        mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
        mlp = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=500, random_state=seed)
        mlp.fit((x[train] - mean) / scale, labels[train])
        tensors = {
            "mean": torch.as_tensor(mean),
            "scale": torch.as_tensor(scale),
            "w0": torch.as_tensor(mlp.coefs_[0]),
            "b0": torch.as_tensor(mlp.intercepts_[0]),
            "w1": torch.as_tensor(mlp.coefs_[1]),
            "b1": torch.as_tensor(mlp.intercepts_[1]),
        }
    return Gate(
        kind,
        layer,
        position,
        {k: v.to(torch.float32).contiguous() for k, v in tensors.items()},
        metadata=dict(metadata or {}),
        template=tuple(template),
    )


def fit_gate(
    x: np.ndarray,
    labels: np.ndarray,
    split: Split,
    *,
    layer: int,
    position: str,
    kind: str = "logistic",
    regularisation: float = 0.1,
    seed: int = 0,
    metadata: dict | None = None,
    template: tuple[int, int] = (0, 0),
) -> tuple[Gate, dict]:
    """Fit the gate on the training side (``train_gate``), calibrate its threshold on the held-out side.

    Args:
        x, labels, layer, position, kind, regularisation, seed, metadata, template: as ``train_gate`` takes them.
        split: the ``Split`` (``train`` and ``test`` indices into ``x``).

    Returns:
        ``(gate, report)``: the report holds the held-out ``auc``, the calibrated ``threshold`` (best balanced
        accuracy), its ``route_rate`` and ``accuracy``, ``n_test``, ``n_train`` and ``positives`` (the label-1 share).

    Raises:
        ToolkitError: an unknown kind, or a training or held-out side with a single label.
    """
    gate = train_gate(
        x,
        labels,
        split.train,
        layer=layer,
        position=position,
        kind=kind,
        regularisation=regularisation,
        seed=seed,
        metadata=metadata,
        template=template,
    )
    labels, test_probability = np.asarray(labels).astype(int), gate.probability(x[split.test])
    gate.threshold = balanced_threshold(test_probability, labels[split.test])
    routed = test_probability >= gate.threshold
    report = {
        "auc": float(roc_auc_score(labels[split.test], test_probability)),
        "threshold": gate.threshold,
        "route_rate": float(routed.mean()),
        "accuracy": float((routed == labels[split.test].astype(bool)).mean()),
        "n_test": int(len(split.test)),
        "n_train": int(len(split.train)),
        "positives": float(labels.mean()),
    }
    gate.metadata.update(report=report)
    return gate, report


def _oversampled(indices: np.ndarray, labels: Sequence, seed: int) -> np.ndarray:
    """``indices`` with the minority label's items repeated until the labels balance (as the paper)."""
    labels = np.asarray([str(label) for label in labels])
    rng = np.random.default_rng(seed)
    by_label = {label: indices[labels[indices] == label] for label in np.unique(labels[indices])}
    if len(by_label) < 2:
        raise ToolkitError(
            f"the gate's training data hold a single label ({next(iter(by_label), 'none')}): "
            "bootstrap more queries or use --labels intents"
        )
    size = max(len(members) for members in by_label.values())
    parts = [np.concatenate([members, rng.choice(members, size=size - len(members))]) for members in by_label.values()]
    return np.sort(np.concatenate(parts))
