"""Measuring the model's behaviour: multiple-choice scoring, generation, the refusal rule,
verifiable instructions, the MT-Bench judge, the task registry and evaluation of a condition."""
