"""Changing and measuring the model: what a persona does, causally.

Interventions on the residual stream are context managers that remove their hooks on the way
out and raise ``HookDidNotFire`` if a hook never ran (``hooks``); the causal tests built on them
(activation patching, steering, mean ablation, attention to the persona, logit lens) are in
``causal`` and ``intervene``. Measuring behaviour (``interventions.measure``: scoring,
generation, refusal, instructions, the judge, the task registry, ``evaluate``) and the
persona-effect study (``interventions.study``) sit beside them.

    from interventions import AddDirection, evaluate

    with AddDirection(model, direction, layers=[12], positions=[-1]) as steering:
        result = evaluate(model, tokenizer, items, Condition("none"), scoring="cloze")
    print(steering.record())
"""

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "interventions.hooks": ("AblateDirection", "AddDirection", "Intervention", "PatchActivations"),
    "interventions.intervene": ("run_interventions",),
    "interventions.measure.evaluate": ("evaluate",),
    "interventions.measure.generation": ("generate",),
    "interventions.measure.judge": ("make_judge",),
    "interventions.measure.refusal": ("is_refusal",),
    "interventions.measure.scoring": ("score_choices",),
    "interventions.study.report": ("summarise_study",),
    "interventions.study.runner": ("run_study",),
    "probes.readouts": ("capture_residuals", "logit_lens", "logits_at", "residual_norms"),
})
