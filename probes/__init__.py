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

from typing import TYPE_CHECKING

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "probes.core.datasets": ("load_dataset", "stratified_sample"),
        "probes.core.errors": ("ToolkitError",),
        "probes.core.files": ("load_tensors", "save_tensors"),
        "probes.core.items": ("Item",),
        "probes.core.models": ("eager_attention", "load_model", "set_attention"),
        "probes.core.parallel": ("World", "world"),
        "probes.core.personas": ("Persona", "get_persona", "persona_library"),
        "probes.core.prompts": ("Condition", "RenderedPrompt", "encode", "render"),
        "probes.core.rendering": ("render_items",),
        "probes.core.stats": ("Estimate", "bootstrap_mean", "paired_difference"),
        "probes.directions": ("persona_differences", "shared_structure"),
        "probes.intents": ("intent_queries",),
        "probes.linear": ("LinearProbe", "fit_probe", "load_probe", "save_probe", "score_probe"),
        "probes.passes": ("HookDidNotFire", "read_activations", "residual_hooks"),
        "probes.recording": ("record_activations",),
        "probes.splits": ("held_out_split", "in_distribution_split"),
        "probes.store": ("ActivationStore",),
        "probes.study": ("run_probe_study",),
    },
)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_layering.py keeps it equal to the lazy map
    from probes.core.datasets import load_dataset, stratified_sample
    from probes.core.errors import ToolkitError
    from probes.core.files import load_tensors, save_tensors
    from probes.core.items import Item
    from probes.core.models import eager_attention, load_model, set_attention
    from probes.core.parallel import World, world
    from probes.core.personas import Persona, get_persona, persona_library
    from probes.core.prompts import Condition, RenderedPrompt, encode, render
    from probes.core.rendering import render_items
    from probes.core.stats import Estimate, bootstrap_mean, paired_difference
    from probes.directions import persona_differences, shared_structure
    from probes.intents import intent_queries
    from probes.linear import LinearProbe, fit_probe, load_probe, save_probe, score_probe
    from probes.passes import HookDidNotFire, read_activations, residual_hooks
    from probes.recording import record_activations
    from probes.splits import held_out_split, in_distribution_split
    from probes.store import ActivationStore
    from probes.study import run_probe_study
