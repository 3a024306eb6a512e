"""``prism probe``: where intent and persona live, layer by layer.

1. Record the residual stream after every block (last prompt token and prompt mean) for
   balanced intent queries (``probes.intents``) under no persona.
2. Per layer, position, probe kind and target, fit on the training side of a split made before
   any fitting, and score held-out accuracy and AUC with bootstrap CIs. Two splits side by side:
   held-out groups (whole MMLU subjects, MT-Bench categories, HarmBench categories never seen in
   training) and in-distribution (random items of the training groups). Controls on every
   curve: the same probe fitted to shuffled labels, and a probe that may only read a random
   direction.
3. Persona directions: the same queries (a subset) under each persona and length; per layer, the
   mean paired difference from no persona, its norm, cosines between personas and with the
   intent direction, and how much of them is one shared direction.
4. Save directions and probes (safetensors + metadata), tables, figures and a report.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import save_tensors, write_record, write_table
from probes.core.parallel import World, world
from probes.core.personas import LENGTHS, Persona, builtin_personas, check_length
from probes.core.prompts import Condition, render
from probes.core.stats import Estimate
from probes.directions import cosine, norm_estimate, persona_differences, shared_structure
from probes.intents import POSITIONS, TARGETS, LabelledQuery, intent_queries, target_labels
from probes.linear import (
    PROBE_KINDS,
    as_numpy,
    fit_probe,
    random_direction_control,
    score_probe,
    shuffled_label_control,
)
from probes.passes import EMBEDDING_HOOK, layer_index, residual_hooks
from probes.recording import record_activations
from probes.report import write_probe_report
from probes.splits import balance, held_out_split, in_distribution_split
from probes.store import ActivationStore
from probes.summary import ProbeSummary

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def data_hash(queries: Sequence[LabelledQuery]) -> str:
    digest = hashlib.sha256()
    for query in queries:
        digest.update(f"{query.item.id}\t{query.intent}\t{query.group}\n".encode())
    return digest.hexdigest()[:16]


def record_conditions(
    model: TransformerBridge,
    tokenizer,
    jobs: Sequence[tuple[Condition, Sequence[LabelledQuery], Path]],
    hooks,
    batch_size: int,
    progress: bool,
    group: World,
    library: Mapping[str, Persona] | None = None,
) -> dict[tuple[str, str], ActivationStore]:
    """Record every ``(condition, queries, directory)`` job at every read position (resuming finished stores), the
    conditions' personas read from ``library`` (default: the built-in personas).

    Under ``torchrun`` the stores are the units of work: rank r records stores ``i % N == r``, each in full, so
    every store is the one a single process writes. Returns ``(condition slug, position) -> store`` on every rank.
    """
    units = [
        (condition, job_queries, directory, position)
        for condition, job_queries, directory in jobs
        for position in POSITIONS
    ]
    with group.together():
        for condition, job_queries, directory, position in tqdm(
            group.share(units), desc="recording", unit="store", disable=not progress or not group.is_main
        ):
            prompts = [
                render(
                    tokenizer,
                    q.item.prompt,
                    condition,
                    personas=library,
                    item_id=q.item.id,
                    item_category=q.item.category,
                )
                for q in job_queries
            ]
            record_activations(
                model,
                tokenizer,
                prompts,
                _store_directory(directory, condition, position),
                hooks=hooks,
                positions=position,
                batch_size=batch_size,
                progress=False,
                metadata={"condition": condition.to_dict(), "data": data_hash(job_queries)},
            )
    return {
        (condition.slug, position): ActivationStore(_store_directory(directory, condition, position))
        for condition, _, directory, position in units
    }


def _store_directory(directory: Path, condition: Condition, position: str) -> Path:
    return directory / f"{condition.slug}-{position}"


def probe_scores(
    activations: dict[str, dict[str, np.ndarray]],
    queries: Sequence[LabelledQuery],
    hooks: Sequence[str],
    *,
    kinds: Sequence[str] = PROBE_KINDS,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Every (target, split, position, layer, kind) score with its controls."""
    intents = [q.intent for q in queries]
    groups = [q.group for q in queries]
    rows = []
    jobs = [(target, position) for target in TARGETS for position in activations]
    for target, position in tqdm(jobs, desc="probes", unit="target", disable=not progress):
        labels = target_labels(target, intents)
        member = np.array([i for i, label in enumerate(labels) if label is not None])
        member_labels = [labels[i] for i in member]
        member_groups = [groups[i] for i in member]
        held = held_out_split(member_labels, member_groups, seed=seed)
        held.check_disjoint(member_groups)
        inside = in_distribution_split(member_labels, held.train, seed=seed)
        for split_name, split in (("held-out", held), ("in-distribution", inside)):
            train = member[balance(split.train, member_labels, seed=seed)]
            test = member[balance(split.test, member_labels, seed=seed)]
            y_train = np.array([labels[i] for i in train])
            y_test = np.array([labels[i] for i in test])
            for layer, hook in enumerate(hooks):
                x = activations[position][hook]
                base = {
                    "target": target,
                    "split": split_name,
                    "position": position,
                    "hook": hook,
                    "layer": layer_index(hook),
                    "n_train": len(train),
                }
                for kind in kinds:
                    probe = fit_probe(kind, x[train], y_train, seed=seed)
                    rows.append({**base, "probe": kind, **score_probe(probe, x[test], y_test, seed=seed).to_dict()})
                    control = shuffled_label_control(kind, x[train], y_train, x[test], y_test, seed=seed)
                    rows.append({**base, "probe": f"{kind} (shuffled labels)", **control.to_dict()})
                control = random_direction_control(x[train], y_train, x[test], y_test, seed=seed)
                rows.append({**base, "probe": "random direction", **control.to_dict()})
    return rows


def earliest_decodable(
    rows: Sequence[dict], target: str, position: str, kind: str = "logistic", split: str = "held-out"
) -> dict | None:
    """The first layer whose AUC CI lies above both controls' CIs (and its numbers)."""
    chosen = sorted(
        (r for r in rows if r["target"] == target and r["position"] == position and r["split"] == split),
        key=lambda r: r["layer"],
    )
    for row in (r for r in chosen if r["probe"] == kind):
        controls = [
            r
            for r in chosen
            if r["layer"] == row["layer"] and r["probe"] in (f"{kind} (shuffled labels)", "random direction")
        ]
        auc = Estimate.from_columns(row, "auc")
        against = {c["probe"]: Estimate.from_columns(c, "auc") for c in controls}
        if controls and all(auc.low > c.high for c in against.values()):
            return {
                "layer": row["layer"],
                **auc.columns("auc"),
                "n": auc.n,
                "controls": {probe: (c.mean, c.low, c.high) for probe, c in against.items()},
            }
    return None


def intent_directions(activations: dict[str, np.ndarray], intents: Sequence[str], hooks: Sequence[str], target: str):
    """Per layer, the unit difference-of-means direction of a binary target (towards classes[1])."""
    labels = np.array(target_labels(target, intents), dtype=object)
    classes = sorted({label for label in labels if label is not None})
    if len(classes) != 2:
        raise ToolkitError(f"{target} is not a binary target")
    directions = []
    for hook in hooks:
        x = activations[hook]
        difference = x[labels == classes[1]].mean(axis=0) - x[labels == classes[0]].mean(axis=0)
        norm = np.linalg.norm(difference)  # zero where every prompt ends in the same token (embeddings, last)
        directions.append(difference / norm if norm > 0 else difference)
    return classes, np.stack(directions)


def run_probe_study(
    out: str | Path,
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    *,
    per_intent: int = 160,
    extra: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = PROBE_KINDS,
    personas: Sequence[str] | None = None,
    library: Mapping[str, Persona] | None = None,
    persona_lengths: Sequence[str] = LENGTHS,
    persona_queries: int = 24,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> ProbeSummary:
    """Run the probe study into ``out`` (re-running resumes the recordings); the steps are in the module docstring.

    Args:
        out: the output directory: ``activations/`` (the stores), ``directions/`` and ``probes/`` (safetensors),
            the tables (``probe_scores``, ``persona_directions``, ``persona_shared``, ``persona_lengths``: CSV + JSON),
            figures, ``report.md`` and ``summary.json``.
        model, tokenizer: the bridged model and its tokenizer (``load_model``).
        per_intent: intent queries per intent (``intent_queries``; capped by the smallest intent).
        extra: user .jsonl/.csv files of more intent-labelled queries (their ``category`` is the intent).
        layers: blocks to read (default: every block); the token embeddings are always added as layer -1.
        kinds: probe kinds to fit: any of ``logistic``, ``diff-means``, ``lda``.
        personas: names in ``library`` of the personas whose directions are found (default: every persona in it).
        library: the persona library (default: the built-in twelve; ``persona_library`` adds a user's file).
        persona_lengths: persona text lengths to record (default: ``min``, ``short``, ``long``).
        persona_queries: about how many of the intent queries, the same number per intent, to record under
            each persona and length.
        seed: splitting, fitting, sampling and bootstrap seed.
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        the ``ProbeSummary``: for each target and read position, the earliest layer whose held-out AUC lies above
        both controls; ``summary.json`` holds the full record.

    Raises:
        ToolkitError: an unknown probe kind, persona or length, a layer the model does not have, or ``per_intent``
            below 2, or a malformed ``extra`` file.
    """

    out = Path(out)
    unknown = [kind for kind in kinds if kind not in PROBE_KINDS]
    if unknown:
        raise ToolkitError(f"unknown probe {unknown[0]!r}: use any of {', '.join(PROBE_KINDS)}")
    conditions = persona_conditions(personas, persona_lengths, library)
    queries = intent_queries(per_intent, extra=extra, seed=seed)
    hooks = [EMBEDDING_HOOK] + residual_hooks(model, layers)  # token embeddings: the lexical baseline
    meta = {"model": model.cfg.model_name, **precision(model), "data": data_hash(queries), "hooks": hooks, "seed": seed}

    chosen = _spread_queries(queries, persona_queries)
    persona_set = [queries[i] for i in chosen]
    log.info(
        f"recording {len(queries)} intent queries x {len(hooks)} layers under no persona, and {len(persona_set)} "
        f"of them under {len(conditions)} persona conditions"
    )
    group = world()
    stores = record_conditions(
        model,
        tokenizer,
        [(Condition("none"), queries, out / "activations")]
        + [(condition, persona_set, out / "activations" / "personas") for condition in conditions],
        hooks,
        batch_size,
        progress,
        group,
        library,
    )
    # the rest is cheap next to recording: rank 0 analyses, the others receive its summary
    summary = group.on_main(
        lambda: _analyse(out, stores, queries, chosen, conditions, hooks, kinds, meta, seed, progress)
    )
    return ProbeSummary.from_record(out, summary)


def persona_conditions(
    personas: Sequence[str] | None, lengths: Sequence[str], library: Mapping[str, Persona] | None = None
) -> list[Condition]:
    """The persona conditions of the persona directions: each persona at each length, in the system prompt.

    Args:
        personas: names in ``library`` (None: every persona in it).
        lengths: persona text lengths (``min``, ``short``, ``long``).
        library: the persona library (default: the built-in personas).

    Returns:
        the conditions, persona by persona.

    Raises:
        ToolkitError: a persona not in ``library``, an unknown length, or a persona without a text at a length.
    """
    library = builtin_personas() if library is None else library
    names = list(library) if personas is None else list(personas)
    for name in names:
        if name not in library:
            raise ToolkitError(f"unknown persona {name!r}: see `prism personas` (add your own with --personas-file)")
    for length in lengths:
        check_length(length)
    for name, length in ((name, length) for name in names for length in lengths):
        if length not in library[name].texts:  # a user's persona may have fewer lengths
            raise ToolkitError(
                f"persona {name!r} has no {length!r} text (it has: {', '.join(library[name].texts)}): "
                "give the lengths every chosen persona has (--persona-lengths)"
            )
    return [Condition(name, length, "system") for name in names for length in lengths]


def _analyse(out: Path, stores, queries, chosen, conditions, hooks, kinds, meta, seed, progress) -> dict:
    """Steps 2-4 of the module docstring on the recorded stores; writes every table, figure and ``summary.json``."""
    none = Condition("none").slug
    activations = {
        position: {hook: as_numpy(stores[(none, position)].load(hook)) for hook in hooks} for position in POSITIONS
    }
    rows = probe_scores(activations, queries, hooks, kinds=kinds, seed=seed, progress=progress)
    _write_rows(out / "probe_scores", rows)

    intents = [q.intent for q in queries]
    summary = {"model": meta["model"], "n_queries": len(queries), "data": meta["data"], "earliest": {}, "saved": []}
    directions_by_position = {}
    for position in POSITIONS:
        for target in ("knowledge-vs-generation", "harmful-vs-benign"):
            classes, directions = intent_directions(activations[position], intents, hooks, target)
            directions_by_position[(target, position)] = directions
            scores = {
                r["layer"]: r["auc"]
                for r in rows
                if r["target"] == target
                and r["position"] == position
                and r["split"] == "held-out"
                and r["probe"] == "diff-means"
            }
            path = save_tensors(
                out / "directions" / f"intent_{target}_{position}.safetensors",
                {"directions": directions},
                {
                    **meta,
                    "target": target,
                    "classes": classes,
                    "positions": position,
                    "layers": [layer_index(h) for h in hooks],
                    "kind": "diff-means (unit)",
                    "held_out_auc": [scores.get(layer_index(h)) for h in hooks],
                },
            )
            summary["saved"].append(str(path.relative_to(out)))
        for target in TARGETS:
            summary["earliest"][f"{target}/{position}"] = earliest_decodable(rows, target, position)
    summary["saved"] += _save_probes(out, activations, queries, hooks, meta, rows, seed)

    persona_set = [queries[i] for i in chosen]
    base_acts = {p: {h: activations[p][h][chosen] for h in hooks} for p in POSITIONS}  # recorded above
    persona = _persona_directions(stores, persona_set, base_acts, conditions, out, hooks, directions_by_position, meta)
    summary["personas"] = persona["summary"]

    write_probe_report(out, rows, persona, activations, queries, persona_set, directions_by_position, hooks, summary)
    write_record(out / "summary.json", summary)
    return summary


def _save_probes(out: Path, activations, queries, hooks, meta, rows, seed) -> list[str]:
    """A logistic probe per layer for each target and position, fitted on every query; the
    metadata carries each layer's held-out AUC (from the split's training side)."""
    saved = []
    intents = [q.intent for q in queries]
    for target in TARGETS:
        labels = target_labels(target, intents)
        member = balance(np.array([i for i, label in enumerate(labels) if label is not None]), labels, seed=seed)
        y = np.array([labels[i] for i in member])
        for position in POSITIONS:
            probes = [fit_probe("logistic", activations[position][hook][member], y, seed=seed) for hook in hooks]
            path = save_tensors(
                out / "probes" / f"{target}_{position}.safetensors",
                {"weights": np.stack([p.weights for p in probes]), "bias": np.stack([p.bias for p in probes])},
                {
                    **meta,
                    "target": target,
                    "positions": position,
                    "kind": "logistic",
                    "classes": list(probes[0].classes),
                    "layers": [layer_index(h) for h in hooks],
                    "n": len(member),
                    "held_out_auc": [
                        next(
                            (
                                r["auc"]
                                for r in rows
                                if r["target"] == target
                                and r["position"] == position
                                and r["split"] == "held-out"
                                and r["probe"] == "logistic"
                                and r["hook"] == h
                            ),
                            None,
                        )
                        for h in hooks
                    ],
                },
            )
            saved.append(str(path.relative_to(out)))
    return saved


def _spread_queries(queries: Sequence[LabelledQuery], n: int) -> list[int]:
    """Indices of about ``n`` queries, the same number per intent, spread over each intent's list."""
    by_intent: dict[str, list[int]] = {}
    for index, query in enumerate(queries):
        by_intent.setdefault(query.intent, []).append(index)
    per = max(1, n // len(by_intent))
    chosen = []
    for members in by_intent.values():
        picks = np.unique(np.linspace(0, len(members) - 1, min(per, len(members))).astype(int))
        chosen += [members[i] for i in picks]
    return chosen


def _persona_directions(stores, queries, base_acts, conditions, out, hooks, intent_dirs, meta) -> dict:
    """``base_acts``: the same queries' no-persona activations (position -> hook -> [n, d])."""
    personas = list(dict.fromkeys(condition.persona for condition in conditions))
    lengths = list(dict.fromkeys(condition.length for condition in conditions))
    differences = {
        (condition.persona, condition.length, position): {
            hook: persona_differences(
                as_numpy(stores[(condition.slug, position)].load(hook)), base_acts[position][hook]
            )
            for hook in hooks
        }
        for condition in conditions
        for position in POSITIONS
    }
    rows = _direction_rows(differences, base_acts, hooks, intent_dirs)
    shared = _shared_rows(differences, personas, lengths, hooks)
    length_pairs = _length_pairs(differences, personas, lengths, hooks)
    _write_rows(out / "persona_directions", rows)
    _write_rows(out / "persona_shared", shared)
    _write_rows(out / "persona_lengths", length_pairs)
    for position in POSITIONS:
        tensors = {
            f"{persona}/{length}": np.stack([differences[(persona, length, position)][h].mean(axis=0) for h in hooks])
            for persona in personas
            for length in lengths
        }
        save_tensors(
            out / "directions" / f"persona_{position}.safetensors",
            tensors,
            {
                **meta,
                "positions": position,
                "layers": [layer_index(h) for h in hooks],
                "kind": "mean persona-minus-no-persona (unnormalised)",
                "n_queries": len(queries),
            },
        )
    return {
        "summary": {"n_queries": len(queries), "conditions": len(conditions)},
        "rows": rows,
        "shared": shared,
        "lengths": length_pairs,
        "differences": differences,
        "base": base_acts,
    }


def _direction_rows(differences, base_acts, hooks, intent_dirs) -> list[dict]:
    """Per persona, length, position and layer: the shift's norm (with its CI), the residual's typical norm and
    the cosine of the mean shift with each intent direction read at that position."""
    rows = []
    for (persona, length, position), by_hook in differences.items():
        for hook in hooks:
            norm = norm_estimate(by_hook[hook])
            direction = by_hook[hook].mean(axis=0)
            row = {
                "persona": persona,
                "length": length,
                "position": position,
                "layer": layer_index(hook),
                **norm.columns("norm"),
                "n": norm.n,
                "residual_norm": float(np.linalg.norm(base_acts[position][hook], axis=1).mean()),
            }
            for (target, pos), dirs in intent_dirs.items():
                if pos == position:
                    row[f"cos_{target}"] = cosine(direction, dirs[hooks.index(hook)])
            rows.append(row)
    return rows


def _shared_rows(differences, personas, lengths, hooks) -> list[dict]:
    """Per position, length and layer: how much of the personas' mean shifts is one shared direction."""
    shared = []
    for position in POSITIONS:
        for length in lengths:
            for hook in hooks:
                directions = {p: differences[(p, length, position)][hook].mean(axis=0) for p in personas}
                if len(directions) > 1 and all(np.linalg.norm(d) > 0 for d in directions.values()):
                    shared.append(
                        {
                            "position": position,
                            "length": length,
                            "layer": layer_index(hook),
                            **shared_structure(directions).to_dict(),
                        }
                    )
    return shared


def _length_pairs(differences, personas, lengths, hooks) -> list[dict]:
    """Per persona, position and layer with both lengths: the cosine and norm ratio of the long and min shifts."""
    pairs = []
    for position in POSITIONS:
        for persona in personas:
            present = [length for length in lengths if (persona, length, position) in differences]
            if "min" not in present or "long" not in present:
                continue
            for hook in hooks:
                short, long = (
                    differences[(persona, length, position)][hook].mean(axis=0) for length in ("min", "long")
                )
                pairs.append(
                    {
                        "persona": persona,
                        "position": position,
                        "layer": layer_index(hook),
                        "cos_min_long": cosine(short, long),
                        "norm_ratio_long_min": float(np.linalg.norm(long) / (np.linalg.norm(short) + 1e-12)),
                    }
                )
    return pairs


def _write_rows(stem: Path, rows: Sequence[dict]) -> None:
    write_table(stem.with_suffix(".csv"), rows)
