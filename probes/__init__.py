"""Reading the model: where intent and persona live, layer by layer.

The ground every package builds on lives in ``probes.core`` (loading, personas, prompts and their
rendering, data sets, batching, statistics, atomic files, errors); this package records
activations into resumable stores and fits linear probes and persona directions on them, with
held-out splits and controls.

    from probes import load_model, load_dataset, stratified_sample, Condition, render_items, record_activations

    model, tokenizer = load_model()
    items = stratified_sample(load_dataset("mmlu"), 40, seed=0)
    prompts = render_items(tokenizer, items, Condition("math", length="long"))
    store = record_activations(model, tokenizer, prompts, "runs/acts", hooks=["blocks.3.hook_out"], positions="last")
"""

from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_tensors
from probes.core.items import Item
from probes.core.models import load_model
from probes.core.personas import Persona, get_persona, persona_library
from probes.core.prompts import Condition, RenderedPrompt, encode, render
from probes.core.rendering import render_items
from probes.core.stats import Estimate, bootstrap_mean, paired_difference
from probes.directions import persona_differences, shared_structure
from probes.intents import intent_queries
from probes.linear import LinearProbe, fit_probe, load_probe, save_probe, score_probe
from probes.recording import HookDidNotFire, record_activations, residual_hooks
from probes.splits import held_out_split, in_distribution_split
from probes.store import ActivationStore
from probes.study import run_probe_study

__all__ = [
    "ActivationStore", "Condition", "Estimate", "HookDidNotFire", "Item", "LinearProbe", "Persona", "RenderedPrompt",
    "ToolkitError", "bootstrap_mean", "encode", "fit_probe", "get_persona", "held_out_split", "in_distribution_split",
    "intent_queries", "load_dataset", "load_model", "load_probe", "load_tensors", "paired_difference",
    "persona_differences", "persona_library", "record_activations", "render", "render_items", "residual_hooks",
    "run_probe_study", "save_probe", "save_tensors", "score_probe", "shared_structure", "stratified_sample",
]
