"""PRISM: routing personas per query by reading a probe inside the model.

The pieces, each usable alone: the bootstrap (stages 1-3: the model writes queries per persona,
answers with and without it, and judges both orders), the probe gate on an early block's
residual stream, the gated LoRA self-distilled from the persona, routed inference that decides
each row in the answering prefill, the baseline routers, and the Table-1 comparison. A
``PrismDirectory`` knows where every file of a working directory lives; ``pipeline`` runs one
working directory end to end (what ``prism bootstrap/train/route/compare`` call).

    from prism import Gate, Routed, load_adapter

    gate = Gate.load("runs/prism/gate/gate.safetensors")
    load_adapter(model, "prism", "runs/prism/adapters/prism")
    with Routed(model, gate, adapter="prism") as routed:
        answers = generate(model, tokenizer, prompts, max_new_tokens=64)
    print(routed.decisions)
"""

from typing import TYPE_CHECKING

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "prism.adapters": ("active_adapter", "load_adapter", "save_adapter"),
        "prism.baselines": ("EmbeddingRouter", "SelfClassifyRouter"),
        "prism.bootstrap": ("BootstrapConfig", "run_bootstrap"),
        "prism.samples": ("Sample", "load_samples"),
        "prism.compare": ("CompareBudget", "run_compare"),
        "prism.distill": ("DistillConfig",),
        "prism.gate": ("Gate", "fit_gate"),
        "prism.summary": ("BootstrapSummary", "CompareSummary", "TrainSummary"),
        "prism.routing": ("Routed", "route_probabilities"),
        "prism.train": ("run_training",),
        "prism.workdir": ("PrismDirectory",),
    },
)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_layering.py keeps it equal to the lazy map
    from prism.adapters import active_adapter, load_adapter, save_adapter
    from prism.baselines import EmbeddingRouter, SelfClassifyRouter
    from prism.bootstrap import BootstrapConfig, run_bootstrap
    from prism.compare import CompareBudget, run_compare
    from prism.distill import DistillConfig
    from prism.gate import Gate, fit_gate
    from prism.routing import Routed, route_probabilities
    from prism.samples import Sample, load_samples
    from prism.summary import BootstrapSummary, CompareSummary, TrainSummary
    from prism.train import run_training
    from prism.workdir import PrismDirectory
