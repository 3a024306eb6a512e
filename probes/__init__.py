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

from probes.core.exports import lazy_exports

_ORIGINS = {
    "load_dataset": "probes.core.datasets",
    "stratified_sample": "probes.core.datasets",
    "ToolkitError": "probes.core.errors",
    "load_tensors": "probes.core.files",
    "save_tensors": "probes.core.files",
    "Item": "probes.core.items",
    "load_model": "probes.core.models",
    "Persona": "probes.core.personas",
    "get_persona": "probes.core.personas",
    "persona_library": "probes.core.personas",
    "Condition": "probes.core.prompts",
    "RenderedPrompt": "probes.core.prompts",
    "encode": "probes.core.prompts",
    "render": "probes.core.prompts",
    "render_items": "probes.core.rendering",
    "Estimate": "probes.core.stats",
    "bootstrap_mean": "probes.core.stats",
    "paired_difference": "probes.core.stats",
    "persona_differences": "probes.directions",
    "shared_structure": "probes.directions",
    "intent_queries": "probes.intents",
    "LinearProbe": "probes.linear",
    "fit_probe": "probes.linear",
    "load_probe": "probes.linear",
    "save_probe": "probes.linear",
    "score_probe": "probes.linear",
    "HookDidNotFire": "probes.recording",
    "record_activations": "probes.recording",
    "residual_hooks": "probes.recording",
    "held_out_split": "probes.splits",
    "in_distribution_split": "probes.splits",
    "ActivationStore": "probes.store",
    "run_probe_study": "probes.study",
}
__all__ = sorted(_ORIGINS)
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)
