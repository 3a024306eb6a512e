"""The ``prism`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from probes.core.errors import ToolkitError

COMMANDS = {
    "demo": "run the toolkit's story end to end on the embedded model and print a summary",
    "evaluate": "score one persona condition on a data set; write per-item JSON with a 95% CI",
    "record": "record activations under a persona condition into a resumable on-disk store",
    "personas": "list the persona library (built-in and from a file)",
    "study": "the persona-effect study: every task under a grid of persona conditions, with tables, figures and a report (resumable)",
    "report": "rewrite the tables, figures and report of finished study directories (and compare models)",
    "probe": "probes and directions: where intent and persona live, layer by layer, with controls; saves directions and probes",
    "intervene": "causal tests on knowledge items: activation patching, steering, directional ablation, logit lens",
    "bootstrap": "PRISM stages 1-3: the model writes queries per persona, answers with and without it, and judges both orders",
    "train": "PRISM: fit the probe gate (sweep over early blocks), distil the gated and ungated LoRA adapters, fit the baseline routers",
    "route": "answer prompts with PRISM routing, showing the gate's probability and decision for each",
    "compare": "PRISM's Table-1 evaluation: base, expert prompt, ungated LoRA, PRISM, probe-routed prompt and steering, baseline routers",
}


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m', a hub id, a directory or a .gguf file")


def _add_condition(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("persona condition")
    group.add_argument("--persona", default="none",
                       help="persona name, 'none', 'expert' (matched to each item's category) or 'random' (mismatched control); see `prism personas`")
    group.add_argument("--length", default="min", choices=("min", "short", "long"), help="persona length (default: min)")
    group.add_argument("--placement", default="system", choices=("system", "user"), help="where the persona goes (default: system)")
    group.add_argument("--base-system", default="empty", choices=("empty", "template"),
                       help="system slot when it holds no persona: an explicit empty message (default) or the template's own default")
    group.add_argument("--personas-file", type=Path, help="JSON file of extra personas (same schema as the built-in library)")


def _add_items(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="mmlu, mtbench, harmbench, or a .jsonl/.csv file")
    parser.add_argument("-n", type=int, default=None, help="items to sample, stratified by category (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")


def _add_prism_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/prism"), help="the PRISM working directory (default: runs/prism)")


def _command(sub, name: str) -> argparse.ArgumentParser:
    text = COMMANDS[name].replace("%", "%%")  # argparse formats help strings with %
    return sub.add_parser(name, help=text, description=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="Expert personas, opened up: probes, interventions and PRISM routing.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _command(sub, "demo")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)")
    _add_model(demo)

    evaluate = _command(sub, "evaluate")
    _add_model(evaluate)
    _add_items(evaluate)
    _add_condition(evaluate)
    evaluate.add_argument("--scoring", default="letter", choices=("letter", "cloze"), help="multiple-choice scoring (default: letter)")
    evaluate.add_argument("--answer-prefix", default="Answer:", help="text that opens the assistant turn when scoring (default: 'Answer:')")
    evaluate.add_argument("--normalise", choices=("none", "tokens", "chars"), help="cloze score normalisation (default: none for letter, tokens for cloze)")
    evaluate.add_argument("--max-new-tokens", type=int, default=64, help="generation length for open questions (default: 64)")
    evaluate.add_argument("--out", type=Path, help="output JSON (default: runs/evaluate/<dataset>_<condition>.json)")

    record = _command(sub, "record")
    _add_model(record)
    _add_items(record)
    _add_condition(record)
    record.add_argument("--hooks", help="comma-separated hook points (default: every block's residual output)")
    record.add_argument("--layers", help="comma-separated block indices, shorthand for their residual outputs")
    record.add_argument("--positions", default="last", choices=("last", "mean", "all"), help="which token positions to keep (default: last)")
    record.add_argument("--shard-size", type=int, default=256, help="prompts per shard file (default: 256)")
    record.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    record.add_argument("--out", type=Path, required=True, help="store directory (re-run the same command to resume)")

    study = _command(sub, "study")
    study.add_argument("--model", action="append", dest="models", metavar="MODEL",
                       help="model to study, repeatable: 'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m', "
                            "a hub id, a directory or a .gguf file (default: default)")
    study.add_argument("--budget", default="default", choices=("smoke", "default", "full"),
                       help="items per cell and grid: smoke (~4 min), default (~20 min on 2 cores), full (hours)")
    study.add_argument("--grid", choices=("smoke", "default", "full"),
                       help="persona conditions; 'full' = all 12 personas, expert and random at every length and placement")
    study.add_argument("--items", type=int, help="items per cell for every task (overrides the budget)")
    study.add_argument("--tasks", help="comma-separated subset of: capitals, mmlu-letter, mmlu-cloze, harmbench, ifeval, mtbench")
    study.add_argument("--judge-url", help="OpenAI-compatible endpoint for the MT-Bench judge, e.g. http://localhost:8000/v1 "
                                           "(default: the studied model judges itself)")
    study.add_argument("--judge-model", help="model name at --judge-url")
    study.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    study.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")
    study.add_argument("--out", type=Path, default=Path("runs/study"),
                       help="results directory; each model gets a subdirectory (default: runs/study; rerun to resume)")

    report = _command(sub, "report")
    report.add_argument("directories", nargs="+", type=Path, help="study directories (one per model)")
    report.add_argument("--compare", type=Path, help="also write the cross-model placement figure here (.png)")

    probe = _command(sub, "probe")
    _add_model(probe)
    probe.add_argument("--per-intent", type=int, default=160, help="queries per intent: knowledge, generation, harmful (default: 160)")
    probe.add_argument("--extra", action="append", default=[], metavar="FILE",
                       help="a .jsonl/.csv of further queries whose category is their intent label (repeatable)")
    probe.add_argument("--layers", help="comma-separated block indices (default: every block)")
    probe.add_argument("--probes", default="logistic,diff-means,lda", help="probe kinds (default: logistic,diff-means,lda)")
    probe.add_argument("--personas", help="comma-separated personas for persona directions (default: all 12)")
    probe.add_argument("--persona-lengths", default="min,short,long", help="persona lengths (default: min,short,long)")
    probe.add_argument("--persona-queries", type=int, default=24, help="queries recorded under every persona (default: 24)")
    probe.add_argument("--seed", type=int, default=0, help="split and sampling seed (default: 0)")
    probe.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default: 16)")
    probe.add_argument("--out", type=Path, default=Path("runs/probe"), help="output directory (default: runs/probe; rerun to resume)")

    intervene = _command(sub, "intervene")
    _add_model(intervene)
    intervene.add_argument("--persona", default="random", help="persona name, or 'random' (default: random, per item)")
    intervene.add_argument("--length", default="long", choices=("min", "short", "long"), help="persona length (default: long)")
    intervene.add_argument("--placement", default="system", choices=("system", "user"), help="persona placement (default: system)")
    intervene.add_argument("-n", type=int, default=48, help="capital-city items (default: 48)")
    intervene.add_argument("--layers", help="comma-separated blocks to patch (default: eight spread over the model)")
    intervene.add_argument("--refusal-items", type=int, default=12,
                           help="HarmBench requests for refusal under steering; 0 skips it (default: 12)")
    intervene.add_argument("--steer-layer", type=int, help="block after which to steer and ablate (default: the earliest block where patching recovers a majority of the effect)")
    intervene.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    intervene.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")
    intervene.add_argument("--out", type=Path, default=Path("runs/intervene"), help="output directory (default: runs/intervene)")

    bootstrap = _command(sub, "bootstrap")
    _add_prism_dir(bootstrap)
    bootstrap.add_argument("--model", default=None, help="model to bootstrap (default: the embedded SmolLM2-135M-Instruct)")
    bootstrap.add_argument("--queries-per-persona", type=int, default=8, help="queries kept per persona (default: 8)")
    bootstrap.add_argument("--personas", help="comma-separated personas (default: all 12)")
    bootstrap.add_argument("--answer-tokens", type=int, default=64, help="tokens per answer (default: 64)")
    bootstrap.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    bootstrap.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")

    train = _command(sub, "train")
    _add_prism_dir(train)
    train.add_argument("--labels", default="bootstrap", choices=("bootstrap", "intents"),
                       help="gate labels: the bootstrap's persona wins (the paper) or intents (knowledge -> base; default: bootstrap)")
    train.add_argument("--verdict", default="both", choices=("both", "debiased"),
                       help="bootstrap label rule: the persona wins both orders (the paper; default), or its preference summed over both orders is positive")
    train.add_argument("--gate", default="logistic", choices=("logistic", "mlp"), help="gate kind (default: logistic probe)")
    train.add_argument("--max-block", type=int, default=3, help="sweep the gate over blocks 0..k (default: 3)")
    train.add_argument("--layer", type=int, help="fix the gate's block instead of choosing it by held-out AUC")
    train.add_argument("--position", choices=("last", "mean", "query"),
                       help="fix the read position instead of choosing it between 'last' and 'query' (all three are swept)")
    train.add_argument("--per-intent", type=int, default=64, help="queries per intent with --labels intents (default: 64)")
    train.add_argument("--extra", action="append", default=[], metavar="FILE",
                       help="with --labels intents: a .jsonl/.csv of further queries whose category is their intent, "
                            "e.g. 'knowledge' (repeatable)")
    train.add_argument("--epochs", type=int, default=2, help="distillation epochs (default: 2)")
    train.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank; default: 16)")
    train.add_argument("--budget", default="default", choices=("smoke", "default"),
                       help="the comparison budget whose items the gate must not see (default: default)")
    train.add_argument("--seed", type=int, default=0, help="split and training seed (default: 0)")

    route = _command(sub, "route")
    _add_prism_dir(route)
    route.add_argument("prompts", nargs="+", help="prompts to answer")
    route.add_argument("--via", default="adapter", choices=("adapter", "steering", "prompt"),
                       help="what the persona path is: the gated adapter (default), the steering vector, or a persona prompt")
    route.add_argument("--persona", default="helpful", help="persona of the prompt path with --via prompt (default: helpful)")
    route.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default: 64)")

    compare = _command(sub, "compare")
    _add_prism_dir(compare)
    compare.add_argument("--budget", default="default", choices=("smoke", "default"), help="items per data set (default: default)")
    compare.add_argument("--systems", help="comma-separated systems (default: all); see the README")
    compare.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")

    personas = _command(sub, "personas")
    personas.add_argument("--personas-file", type=Path, help="JSON file of extra personas")
    personas.add_argument("--length", choices=("min", "short", "long"), default="min", help="which text to show (default: min)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ToolkitError as error:
        print(f"prism {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prism {args.command}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "personas":
        return _personas(args)
    _quiet_transformers()
    if args.command == "demo":
        from prism.demo import run_demo

        run_demo(args.out, model_name=args.model)
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "record":
        return _record(args)
    if args.command == "study":
        return _study(args)
    if args.command == "report":
        return _report(args)
    if args.command == "probe":
        return _probe(args)
    if args.command == "intervene":
        return _intervene(args)
    if args.command in ("bootstrap", "train", "route", "compare"):
        return _prism(args)
    raise AssertionError(args.command)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _condition(args: argparse.Namespace):
    from probes.core.personas import get_persona, persona_library
    from probes.core.prompts import Condition

    library = persona_library(args.personas_file)
    if args.persona not in ("none", "random", "expert"):
        get_persona(args.persona, library)
    return Condition(args.persona, args.length, args.placement, args.base_system), library


def _items(args: argparse.Namespace):
    from probes.core.datasets import load_dataset, stratified_sample

    return stratified_sample(load_dataset(args.dataset), args.n, seed=args.seed)


def _load(name: str):
    from probes.core.models import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(name)
    print(f"loaded {model.cfg.model_name} ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}) in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return model, tokenizer


def _evaluate(args: argparse.Namespace) -> int:
    from interventions.measure.evaluate import evaluate
    from probes.core.files import write_json

    condition, library = _condition(args)
    items = _items(args)
    if args.max_new_tokens < 1:
        raise ToolkitError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    out = args.out or Path("runs/evaluate") / f"{Path(args.dataset).stem}_{condition.slug}.json"
    model, tokenizer = _load(args.model)
    result = evaluate(
        model, tokenizer, items, condition, scoring=args.scoring, answer_prefix=args.answer_prefix,
        normalise=args.normalise, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        personas=library, seed=args.seed,
    )
    result["dataset"] = args.dataset
    write_json(out, result)
    summary = result["summary"]
    chance = f" (chance {result['chance']:.2f})" if "chance" in result else ""
    print(f"{args.dataset} {condition.label}: {result['metric']} {summary['mean']:.3f} "
          f"[95% CI {summary['low']:.3f}, {summary['high']:.3f}], n={summary['n']}{chance}")
    print(f"wrote {out}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from probes.core.rendering import render_items
    from probes.recording import record_activations, residual_hooks

    condition, library = _condition(args)
    items = _items(args)
    if args.hooks and args.layers:
        raise ToolkitError("give --hooks or --layers, not both")
    layers = _layer_list(args.layers)
    model, tokenizer = _load(args.model)
    hooks = None
    if args.hooks:
        hooks = [hook.strip() for hook in args.hooks.split(",") if hook.strip()]
    elif layers is not None:
        hooks = residual_hooks(model, layers)
    prompts = render_items(tokenizer, items, condition, personas=library, seed=args.seed)
    store = record_activations(
        model, tokenizer, prompts, args.out, hooks=hooks, positions=args.positions, batch_size=args.batch_size,
        shard_size=args.shard_size, overwrite=args.overwrite,
        metadata={"dataset": args.dataset, "n": args.n, "seed": args.seed, "condition": condition.to_dict()},
    )
    print(f"recorded {len(store)} prompts x {len(store.hooks)} hooks ({store.positions} positions) into {store.path}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from interventions.study.report import compare_models, summarise_study
    from interventions.study.runner import run_study
    from probes.core.models import model_slug

    models = args.models or ["default"]
    tasks = _csv_list(args.tasks)
    directories = []
    for name in models:
        directory = args.out / model_slug(name)
        start = time.perf_counter()
        run_study(directory, model_name=name, budget=args.budget, tasks=tasks, items=args.items, grid=args.grid,
                  judge_url=args.judge_url, judge_model=args.judge_model, seed=args.seed, batch_size=args.batch_size)
        summarise_study(directory, seed=args.seed)
        directories.append(directory)
        print(f"{name}: study finished in {time.perf_counter() - start:.0f}s; report: {directory / 'report.md'}")
    if len(directories) > 1:
        print(f"compared models: {compare_models(directories, args.out / 'fig1d_placement_models.png')}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from interventions.study.report import compare_models, summarise_study

    for directory in args.directories:
        summarise_study(directory)
        print(f"wrote {directory / 'report.md'} with its tables and figures")
    if args.compare:
        print(f"compared models: {compare_models(args.directories, args.compare)}")
    return 0


def _csv_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _layer_list(text: str | None) -> list[int] | None:
    """Block indices from a --layers value (None when not given)."""
    if not text:
        return None
    try:
        return [int(layer) for layer in _csv_list(text)]
    except ValueError as error:
        raise ToolkitError(f"--layers takes comma-separated integers, got {text!r}") from error


def _probe(args: argparse.Namespace) -> int:
    from probes.study import run_probe_study

    layers = _layer_list(args.layers)
    start = time.perf_counter()
    summary = run_probe_study(
        args.out, model_name=args.model, per_intent=args.per_intent, extra=args.extra, layers=layers,
        kinds=_csv_list(args.probes), personas=_csv_list(args.personas), persona_lengths=_csv_list(args.persona_lengths),
        persona_queries=args.persona_queries, seed=args.seed, batch_size=args.batch_size,
    )
    for name, found in summary["earliest"].items():
        text = (f"layer {found['layer']}: AUC {found['auc']:.2f} [{found['auc_low']:.2f}, {found['auc_high']:.2f}]"
                if found else "not decodable above the controls at any layer")
        print(f"held-out {name}: {text}")
    print(f"probe study finished in {time.perf_counter() - start:.0f}s; report: {args.out / 'report.md'}")
    return 0


def _intervene(args: argparse.Namespace) -> int:
    from interventions.intervene import run_interventions
    from probes.core.personas import get_persona, persona_library
    from probes.core.prompts import Condition

    if args.persona not in ("random", "expert"):
        get_persona(args.persona, persona_library())
    if args.n < 2:
        raise ToolkitError(f"-n must be at least 2, got {args.n}")
    layers = _layer_list(args.layers)
    start = time.perf_counter()
    if args.refusal_items < 0:
        raise ToolkitError(f"--refusal-items must be 0 or more, got {args.refusal_items}")
    summary = run_interventions(
        args.out, model_name=args.model, persona=Condition(args.persona, args.length, args.placement), n_items=args.n,
        layers=layers, steer_layer=args.steer_layer, refusal_items=args.refusal_items, seed=args.seed,
        batch_size=args.batch_size,
    )
    effect, best = summary["effect"], summary["best_patch"]
    print(f"persona effect on the margin: {effect['mean']:+.2f} [{effect['low']:+.2f}, {effect['high']:+.2f}] (n={summary['n']})")
    print(f"decisive patch: block {best['layer']}, {best['group']} tokens: {best['fraction']:+.2f} "
          f"[{best['low']:+.2f}, {best['high']:+.2f}] of the effect recovered")
    print(f"finished in {time.perf_counter() - start:.0f}s; report: {args.out / 'report.md'}")
    return 0


def _prism(args: argparse.Namespace) -> int:
    from prism import pipeline

    start = time.perf_counter()
    if args.command == "bootstrap":
        from prism.bootstrap import BootstrapConfig

        config = BootstrapConfig(queries_per_persona=args.queries_per_persona, answer_tokens=args.answer_tokens,
                                 seed=args.seed, batch_size=args.batch_size)
        summary = pipeline.bootstrap(args.out, model_name=args.model, config=config, personas=_csv_list(args.personas))
        overall = summary["overall"]
        print(f"{overall['n']} queries; the persona won both orders on {overall['win_rate']:.0%} "
              f"[{overall['low']:.0%}, {overall['high']:.0%}]; the two orders agreed on {overall['order_agreement']:.0%}")
        for row in summary["by_persona"]:
            print(f"  {row['persona']:15s} n={row['n']:3d}  win rate {row['win_rate']:.0%} [{row['low']:.0%}, {row['high']:.0%}]")
    elif args.command == "train":
        from prism.distill import DistillConfig

        if args.rank < 1 or args.epochs < 1:
            raise ToolkitError("--rank and --epochs must be at least 1")
        summary = pipeline.train(args.out, labels=args.labels, verdict=args.verdict, gate_kind=args.gate, max_block=args.max_block, layer=args.layer,
                                 position=args.position, per_intent=args.per_intent, extra=args.extra, compare_budget=args.budget,
                                 distill_config=DistillConfig(rank=args.rank, alpha=2 * args.rank, epochs=args.epochs, seed=args.seed),
                                 seed=args.seed)
        gate, quality = summary["gate"], summary["routing_quality"]
        print(f"gate: block {gate['layer']}, {gate['position']} token(s), {gate['kind']}; held-out AUC "
              f"{quality['gate']['auc']:.2f} [{quality['gate']['low']:.2f}, {quality['gate']['high']:.2f}] (n={quality['n_test']}); "
              f"threshold {gate['threshold']:.3f} routes {gate['route_rate']:.0%}")
        for name in ("embedding", "self_classify"):
            q = quality[name]
            print(f"{name.replace('_', '-')} router on the same split: AUC {q['auc']:.2f} [{q['low']:.2f}, {q['high']:.2f}]")
    elif args.command == "route":
        for row in pipeline.route(args.out, args.prompts, via=args.via, persona=args.persona, max_new_tokens=args.max_new_tokens):
            sign = ">=" if row["routed"] else "<"
            print(f"[gate p={row['probability']:.3f} {sign} {row['threshold']:.3f} -> {row['via']}] {row['prompt']}\n{row['answer']}\n")
    else:
        from prism.compare import SYSTEMS, format_table

        systems = _csv_list(args.systems) or list(SYSTEMS)
        summary = pipeline.compare(args.out, budget=args.budget, systems=systems, seed=args.seed)
        print(format_table(summary["table"]))
        print(f"report: {args.out / 'compare' / 'report.md'}")
    print(f"prism {args.command} finished in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


def _personas(args: argparse.Namespace) -> int:
    from probes.core.personas import persona_library

    for persona in persona_library(args.personas_file).values():
        text = persona.texts.get(args.length, "-")
        print(f"{persona.name:<16} {persona.kind:<12} {persona.category or '-':<12} {text[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
