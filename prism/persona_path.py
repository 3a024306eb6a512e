"""What the persona path carries, built from the bootstrapped samples the gate sends there.

- ``prism``: the gated adapter, distilled on the persona-path samples (blocks after the gate's);
- ``sft``: the ungated adapter, distilled on every sample (the paper's SFT baseline);
- the steering vector: the persona's mean shift of the residual over the persona-path samples.

A share of the persona-path samples (``HELD_OUT_SHARE``, drawn per persona with a seed) is kept
out of both adapters' training: on them each adapter's fidelity to the persona
(``prism.fidelity``) is measured, so the number says how much of the persona the adapter
carries to queries it never saw. With ``retain`` prompts (the gate's base-path queries), the
distillation also keeps the adapted model's next-token distributions on them close to the base
model's (``DistillConfig.retain_weight``): what the adapter learns should not leak into knowledge
queries when it is forced on.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from prism.adapters import save_adapter
from prism.distill import DistillConfig, distill
from prism.fidelity import adapter_fidelity
from prism.samples import Sample
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.personas import Persona
from probes.core.prompts import Condition, encode, render
from probes.readouts import final_residuals

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

__all__ = ["GATED", "HELD_OUT_SHARE", "UNGATED", "held_out_samples", "persona_shift", "train_adapters"]

GATED, UNGATED = "prism", "sft"
HELD_OUT_SHARE = 0.25


def held_out_samples(
    samples: Sequence[Sample], share: float = HELD_OUT_SHARE, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(training, held out): ``round(share * n)`` samples held out, taken in turn from the personas (in a seeded
    order, each persona's own drawn with ``seed``), never a persona's last one; nothing is held out from fewer
    than four samples."""
    rng = random.Random(seed)
    by_persona: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_persona[sample.persona].append(sample)
    pools = {persona: rng.sample(group, len(group)) for persona, group in sorted(by_persona.items())}
    order = sorted(pools)
    rng.shuffle(order)
    target = round(share * len(samples)) if len(samples) >= 4 else 0
    held: set[str] = set()
    while len(held) < target and any(len(pools[persona]) > 1 for persona in order):
        for persona in order:
            if len(held) < target and len(pools[persona]) > 1:
                held.add(pools[persona].pop().id)
    return [s for s in samples if s.id not in held], [s for s in samples if s.id in held]


def train_adapters(
    model: TransformerBridge,
    tokenizer,
    samples: Sequence[Sample],
    routes: np.ndarray,
    gate_layer: int,
    config: DistillConfig,
    work: PrismDirectory,
    *,
    retain: Sequence[str] = (),
    personas: Mapping[str, Persona] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Distil and save the gated adapter (persona-path samples) and the ungated one (every sample), each without the
    held-out persona-path samples, and measure both adapters' fidelity on those.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        samples: the bootstrapped samples; ``routes`` marks the persona-path ones (1).
        gate_layer: the gate's block: the adapters change blocks after it only.
        config: distillation settings (``first_block`` is replaced by ``gate_layer + 1``).
        work: the PRISM working directory the adapters are saved in.
        retain: prompts whose next-token distributions the adapters keep close to the base model's.
        personas: the persona library of the teacher's prompts (default: the built-in personas; the directory's is
            ``work.persona_library()``).
        seed: the held-out draw's seed.
        progress: show progress bars.

    Returns:
        per adapter: samples, steps, first and last epoch losses, and ``fidelity`` on the held-out samples (share with
        its 95% CI, both KLs; None when too few samples to hold any out).

    Raises:
        ToolkitError: no sample on the persona path.
    """
    config = replace(config, first_block=gate_layer + 1)
    winners = [s for s, route in zip(samples, routes) if route]
    if not winners:
        raise ToolkitError(
            "no bootstrapped query is on the persona path: nothing to distil into the gated adapter "
            "(bootstrap more queries per persona, or use other labels)"
        )
    training, held = held_out_samples(winners, seed=seed)
    held_ids = {sample.id for sample in held}
    report = {}
    for name, chosen in ((GATED, training), (UNGATED, [s for s in samples if s.id not in held_ids])):
        log.info(
            f"distilling adapter {name!r} on {len(chosen)} samples (blocks "
            f"{config.first_block}..{model.cfg.n_layers - 1}); {len(held)} persona-path samples held out"
        )
        info = distill(model, tokenizer, chosen, name, config, retain=retain, personas=personas, progress=progress)
        fidelity = (
            adapter_fidelity(
                model, tokenizer, held, name, persona_length=config.persona_length, personas=personas, seed=seed
            )
            if held
            else None
        )
        info["fidelity"] = None if fidelity is None else fidelity.to_dict()
        save_adapter(model, name, work.adapter(name), info["peft_config"], info)
        per_epoch = max(1, info["steps"] // config.epochs)
        report[name] = {
            "n_samples": info["n_samples"],
            "steps": info["steps"],
            "n_held_out": len(held),
            "teacher_length": config.persona_length,
            "first_epoch_loss": float(np.mean(info["losses"][:per_epoch])),
            "last_epoch_loss": float(np.mean(info["losses"][-per_epoch:])),
            "fidelity": info["fidelity"],
        }
    return report


def persona_shift(
    model: TransformerBridge,
    tokenizer,
    samples: Sequence[Sample],
    layer: int,
    length: str = "min",
    batch_size: int = 8,
    personas: Mapping[str, Persona] | None = None,
) -> Float[torch.Tensor, " d_model"]:
    """Mean over samples of (persona prompt - plain prompt) residual after ``layer`` at the last token; the samples'
    personas are read from ``personas`` (default: the built-in library)."""
    shifts = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        runs = []
        for condition in (lambda s: Condition(s.persona, length, "system"), lambda s: Condition("none")):
            ids = [encode(tokenizer, render(tokenizer, s.query, condition(s), personas=personas)) for s in chunk]
            runs.append(final_residuals(model, ids, layer, tokenizer.pad_token_id))
        shifts.append(runs[0] - runs[1])
    return torch.cat(shifts).mean(dim=0)
