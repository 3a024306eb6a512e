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

from probes.core.exports import lazy_exports

_ORIGINS = {
    "active_adapter": "prism.adapters",
    "load_adapter": "prism.adapters",
    "save_adapter": "prism.adapters",
    "EmbeddingRouter": "prism.baselines",
    "SelfClassifyRouter": "prism.baselines",
    "BootstrapConfig": "prism.bootstrap",
    "Sample": "prism.bootstrap",
    "load_samples": "prism.bootstrap",
    "run_bootstrap": "prism.bootstrap",
    "CompareBudget": "prism.compare",
    "run_compare": "prism.compare",
    "DistillConfig": "prism.distill",
    "Gate": "prism.gate",
    "fit_gate": "prism.gate",
    "BootstrapSummary": "prism.pipeline",
    "CompareSummary": "prism.pipeline",
    "TrainSummary": "prism.pipeline",
    "Routed": "prism.routing",
    "route_probabilities": "prism.routing",
    "run_training": "prism.train",
    "PrismDirectory": "prism.workdir",
}
__all__ = sorted(_ORIGINS)
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)
