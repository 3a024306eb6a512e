"""Changing and measuring the model: what a persona does, causally.

Interventions on the residual stream are context managers that remove their hooks on the way
out and raise ``HookDidNotFire`` if a hook never ran (``hooks``); the causal tests built on them
(activation patching, steering, mean ablation, attention to the persona, logit lens) are in
``causal`` and ``intervene``. Measuring behaviour (``interventions.measure``: scoring,
generation, refusal, instructions, the judge, the task registry, ``evaluate``) and the
persona-effect study (``interventions.study``) sit beside them.

    from interventions import AddDirection, evaluate

    with AddDirection(model, direction, scale=200.0, layers=[12], positions=[-1]) as steering:
        result = evaluate(model, tokenizer, items, Condition("none"), scoring="cloze")
    print(steering.record())   # one position changed per item: each item's last prompt token

Positions are positions of each sequence, whatever passes ``evaluate`` makes (a shared persona
prefix, several batches, left padding, cached generation); ``tests/interventions/test_positions.py``
runs this example against each item alone.
"""

from typing import TYPE_CHECKING

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
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
    },
)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_layering.py keeps it equal to the lazy map
    from interventions.hooks import AblateDirection, AddDirection, Intervention, PatchActivations
    from interventions.intervene import run_interventions
    from interventions.measure.evaluate import evaluate
    from interventions.measure.generation import generate
    from interventions.measure.judge import make_judge
    from interventions.measure.refusal import is_refusal
    from interventions.measure.scoring import score_choices
    from interventions.study.report import summarise_study
    from interventions.study.runner import run_study
    from probes.readouts import capture_residuals, logit_lens, logits_at, residual_norms
