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

from interventions.hooks import AblateDirection, AddDirection, Intervention, PatchActivations
from interventions.intervene import run_interventions
from interventions.measure.evaluate import evaluate
from interventions.measure.generation import generate
from interventions.measure.refusal import is_refusal
from interventions.measure.scoring import score_choices
from interventions.study.report import summarise_study
from interventions.study.runner import run_study
from probes.readouts import capture_residuals, logit_lens, logits_at, residual_norms

__all__ = [
    "AblateDirection", "AddDirection", "Intervention", "PatchActivations", "capture_residuals", "evaluate", "generate",
    "is_refusal", "logit_lens", "logits_at", "residual_norms", "run_interventions", "run_study", "score_choices",
    "summarise_study",
]
