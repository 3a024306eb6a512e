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

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
