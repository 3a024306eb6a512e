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

_ORIGINS = {
    "AblateDirection": "interventions.hooks",
    "AddDirection": "interventions.hooks",
    "Intervention": "interventions.hooks",
    "PatchActivations": "interventions.hooks",
    "run_interventions": "interventions.intervene",
    "evaluate": "interventions.measure.evaluate",
    "generate": "interventions.measure.generation",
    "is_refusal": "interventions.measure.refusal",
    "score_choices": "interventions.measure.scoring",
    "summarise_study": "interventions.study.report",
    "run_study": "interventions.study.runner",
    "capture_residuals": "probes.readouts",
    "logit_lens": "probes.readouts",
    "logits_at": "probes.readouts",
    "residual_norms": "probes.readouts",
}
__all__ = sorted(_ORIGINS)
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)
