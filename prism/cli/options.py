"""Options that several ``prism`` commands share, each declared once, and the one persona check.

``--model`` has one shape everywhere (a string, default ``default``; ``study`` repeats it);
``--seed``, ``--batch-size`` and ``--out`` come from one helper each, with the command's own
default and wording. The persona options (``--persona``, ``--length``, ``--placement``,
``--base-system``, ``--personas-file``) come from ``add_persona_options``, which records on the
parser which special personas the command accepts; ``resolve_persona`` checks them once, after
parsing and before the command runs, so a bad persona fails before any model loads. Commands that
take a list of personas (``probe``, ``bootstrap``) declare ``--personas`` and ``--personas-file``
with ``add_persona_names``; ``--personas-file`` is declared once, in ``add_personas_file``. ``--wandb``
(``add_wandb``) is declared once for the commands whose results it logs (``prism.cli.tracking``);
``--quiet`` and ``--verbose`` belong to every command and are declared in ``prism.cli.logs``. ``--engine`` and the
vLLM options (``--engine-url``, ``--engine-concurrency``, the three parallel sizes, ``--vllm-arg``) come from
``add_engine`` for the commands that generate without hooks; ``engine_spec`` turns them into an ``EngineSpec``, checked
(vLLM installed) before any model loads.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from interventions.measure.engines import ENGINES, EngineSpec
from interventions.measure.vllm_process import VllmSettings
from probes.core.datasets import BUILTIN_DATASETS, load_dataset, stratified_sample
from probes.core.devices import DEVICE_MAPS, precision
from probes.core.errors import ToolkitError
from probes.core.files import check_writable
from probes.core.models import DEFAULT_MODEL, load_model
from probes.core.personas import LENGTHS, get_persona, persona_library
from probes.core.prompts import BASE_SYSTEMS, EXPERT_PERSONA, NO_PERSONA, PLACEMENTS, RANDOM_PERSONA, Condition

log = logging.getLogger(__name__)

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m', a hub id, a directory or a .gguf file"
SPECIAL_PERSONAS = {
    NO_PERSONA: "'none'",
    EXPERT_PERSONA: "'expert' (matched to each item's category)",
    RANDOM_PERSONA: "'random' (mismatched control, drawn per item)",
}


def add_model(parser: argparse.ArgumentParser, *, repeatable: bool = False) -> None:
    """``--model``: a string, default ``default``; with ``repeatable``, ``args.models`` collects
    every ``--model`` given (None when none is: the caller uses ``["default"]``)."""
    if repeatable:
        parser.add_argument(
            "--model",
            action="append",
            dest="models",
            metavar="MODEL",
            help=f"{MODEL_HELP}; repeat --model to run several models (default: default)",
        )
    else:
        parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    add_precision(parser)


def add_precision(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--device-map``: where and in what precision the model runs (``auto`` by
    default), and whether its blocks spread over several devices."""
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="the weights' precision; auto = bfloat16 on a GPU, float32 on a CPU (default: auto)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        choices=DEVICE_MAPS,
        type=str.lower,
        help="auto: spread a model larger than one device over every GPU (accelerate's device map; "
        "with --device auto); balanced, balanced_low_0 and sequential are accelerate's other "
        "strategies (default: one device)",
    )


def add_wandb(parser: argparse.ArgumentParser) -> None:
    """``--wandb PROJECT``: once the command succeeds, log its options, tables and figures to Weights & Biases
    (``prism.cli.tracking``). The package is checked before the command runs."""
    parser.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="log the run's options, tables (CSV) and figures (PNG) to this Weights & Biases project once "
        "it succeeds (needs `pip install wandb`; WANDB_MODE=offline keeps the run on disk)",
    )
    add_check(parser, lambda args: args.wandb is None or wandb_installed())


def wandb_installed() -> None:
    """Raises ToolkitError, one line with the install hint, when the ``wandb`` package is missing."""
    if importlib.util.find_spec("wandb") is None:
        raise ToolkitError("--wandb needs the package 'wandb', which is not installed: pip install wandb")


def add_engine(parser: argparse.ArgumentParser, hooked: str | None = None) -> None:
    """``--engine`` (``hf`` or ``vllm``) with the vLLM server's options; ``hooked`` says, in the help, which of the
    command's work needs hooks and so runs on the hooked model whatever the engine."""
    note = f"; {hooked} need hooks and run on the hooked model whatever the engine" if hooked else ""
    group = parser.add_argument_group("engine", "what generates text without hooks (see the README: Engines)")
    group.add_argument(
        "--engine",
        default="hf",
        choices=ENGINES,
        help="hf: the hooked model; vllm: a vLLM server the "
        f"toolkit starts on the model's directory (`pip install vllm`){note} (default: hf)",
    )
    group.add_argument(
        "--engine-url",
        metavar="URL",
        help="with --engine vllm: the OpenAI-compatible base URL of a vLLM server already running this "
        "model, e.g. http://localhost:8000/v1 (default: the toolkit starts one)",
    )
    group.add_argument(
        "--engine-concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="with --engine vllm: requests in flight at most (default: 16)",
    )
    for size, what in (
        ("tensor", "GPUs each layer is split over"),
        ("pipeline", "pipeline stages (GPUs or nodes)"),
        ("data", "replicas of the model"),
    ):
        group.add_argument(
            f"--{size}-parallel-size",
            type=positive_int,
            default=1,
            metavar="N",
            help=f"with --engine vllm: {what}, passed to vLLM (default: 1)",
        )
    group.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="with --engine vllm: one more argument for the server as vLLM takes it, e.g. "
        "--vllm-arg=--gpu-memory-utilization=0.85 (repeatable)",
    )
    add_check(parser, lambda args: engine_spec(args).check())


def engine_spec(args: argparse.Namespace) -> EngineSpec:
    """The engine ``add_engine``'s options ask for; one line when vLLM options come without ``--engine vllm``."""
    sizes = (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size)
    if args.engine != "vllm" and (args.engine_url or args.vllm_arg or max(sizes) > 1):
        raise ToolkitError("--engine-url, --vllm-arg and the parallel sizes are vLLM's: add --engine vllm")
    settings = VllmSettings(
        tensor_parallel_size=sizes[0],
        pipeline_parallel_size=sizes[1],
        data_parallel_size=sizes[2],
        extra_args=tuple(args.vllm_arg),
    )
    return EngineSpec(args.engine, url=args.engine_url, settings=settings, concurrency=args.engine_concurrency)


def add_seed(parser: argparse.ArgumentParser, what: str = "sampling seed") -> None:
    """``--seed`` (default 0); ``what`` says what it seeds."""
    parser.add_argument("--seed", type=int, default=0, help=f"{what} (default: 0)")


def add_batch_size(parser: argparse.ArgumentParser, default: int = 8) -> None:
    """``--batch-size``: prompts per forward pass."""
    parser.add_argument(
        "--batch-size", type=positive_int, default=default, help=f"prompts per forward pass (default: {default})"
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the error into one usage line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: give 1 or more")
    return value


def add_out(
    parser: argparse.ArgumentParser,
    help: str,
    default: Path | None = None,
    *,
    required: bool = False,
    kind: str = "directory",
    lock: bool = True,
) -> None:
    """``--out``, a path; what it holds, its default and whether it is required are the command's. Before the command
    runs, the path is checked to be one the command can write (``kind``: a ``directory`` or a ``file``); a directory
    the command writes into (``lock``) is held by this process while it runs: the shell locks the directories that
    ``args.locked(args)`` names (``probes.core.locking``)."""
    parser.add_argument("--out", type=Path, default=default, required=required, help=help)
    add_check(parser, lambda args: args.out is None or check_writable(args.out, kind))
    if kind == "directory" and lock:
        parser.set_defaults(locked=out_directory)


def out_directory(args: argparse.Namespace) -> list[Path]:
    """The directory a command writes into, as ``args.locked`` gives it: ``--out``."""
    return [] if args.out is None else [args.out]


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    """``--judge-url``, ``--judge-model``, ``--judge-api-key-env``, ``--judge-concurrency`` and ``--judge-timeout``: the
    MT-Bench judge (``interventions.measure.judge.make_judge``; default: the model judges itself)."""
    parser.add_argument(
        "--judge-url",
        help="OpenAI-compatible endpoint for the MT-Bench judge, e.g. http://localhost:8000/v1 "
        "(default: the studied model judges itself)",
    )
    parser.add_argument("--judge-model", help="model name at --judge-url")
    parser.add_argument(
        "--judge-api-key-env",
        metavar="NAME",
        help="environment variable holding the key for --judge-url (default: OPENAI_API_KEY when set); "
        "sent over https, or plain http to this machine only",
    )
    parser.add_argument(
        "--judge-concurrency", type=int, default=8, metavar="N", help="judge requests in flight at most (default: 8)"
    )
    parser.add_argument(
        "--judge-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds one judge request may take in all, retries included (default: 120)",
    )


def judge_settings(args: argparse.Namespace) -> dict:
    """The judge options as ``make_judge``'s keyword arguments."""
    return {
        "url": args.judge_url,
        "judge_model": args.judge_model,
        "api_key_env": args.judge_api_key_env,
        "concurrency": args.judge_concurrency,
        "deadline": args.judge_timeout,
    }


def add_check(parser: argparse.ArgumentParser, check) -> None:
    """Run ``check(args)`` after parsing, before the command (so before any model loads); checks add up."""
    parser.set_defaults(checks=(*(parser.get_default("checks") or ()), check))


def add_prism_dir(parser: argparse.ArgumentParser, *, lock: bool = True) -> None:
    """``--out`` as the PRISM working directory (default ``runs/prism``), held while the command runs unless it only
    reads it (``lock``)."""
    add_out(parser, "the PRISM working directory (default: runs/prism)", Path("runs/prism"), lock=lock)


def add_items(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``-n``, ``--seed`` and ``--batch-size``: the items a command runs on."""
    parser.add_argument("--dataset", required=True, help=f"{', '.join(BUILTIN_DATASETS)}, or a .jsonl/.csv file")
    parser.add_argument("-n", type=int, default=None, help="items to sample, stratified by category (default: all)")
    add_seed(parser)
    add_batch_size(parser)


def add_personas_file(parser, more: str = "") -> None:
    """``--personas-file`` on a parser or an argument group; ``more`` ends its help with what the command does with
    it."""
    parser.add_argument(
        "--personas-file", type=Path, help=f"JSON file of extra personas (same schema as the built-in library){more}"
    )


def add_persona_names(parser: argparse.ArgumentParser, what: str, more: str = "") -> None:
    """``--personas`` (comma-separated names of the personas ``what`` is about) and ``--personas-file``, whose personas
    they may name (``more`` ends its help). Before the command runs, the file is read into ``args.library`` (built-in
    personas plus the file's), so a bad file fails before any model loads; the command checks the names."""
    parser.add_argument(
        "--personas",
        help=f"comma-separated personas {what} (default: every persona in the library: "
        "the 12 built-in ones and those of --personas-file)",
    )
    add_personas_file(parser, more)
    add_check(parser, read_library)


def read_library(args: argparse.Namespace) -> None:
    """Set ``args.library``: the built-in personas plus those of ``--personas-file`` (one line if the file is bad)."""
    args.library = persona_library(args.personas_file)


@dataclass(frozen=True)
class PersonaOptions:
    """Which persona options a command offers: its default persona, the special personas it
    accepts besides library names, its default length, and whether it offers ``--base-system``
    (``--personas-file`` comes with every persona condition)."""

    default: str = NO_PERSONA
    specials: tuple[str, ...] = (NO_PERSONA, EXPERT_PERSONA, RANDOM_PERSONA)
    length: str = "min"
    base_system: bool = True


def add_persona_options(parser: argparse.ArgumentParser, options: PersonaOptions = PersonaOptions()) -> None:
    """The persona condition's options, checked by ``resolve_persona`` before the command runs."""
    group = parser.add_argument_group("persona condition")
    accepted = ["persona name"] + [SPECIAL_PERSONAS[name] for name in options.specials]
    listed = ", ".join(accepted[:-1]) + " or " + accepted[-1]
    group.add_argument(
        "--persona", default=options.default, help=f"{listed}; see `prism personas` (default: {options.default})"
    )
    group.add_argument(
        "--length", default=options.length, choices=LENGTHS, help=f"persona length (default: {options.length})"
    )
    group.add_argument(
        "--placement", default="system", choices=PLACEMENTS, help="where the persona goes (default: system)"
    )
    if options.base_system:
        group.add_argument(
            "--base-system",
            default="empty",
            choices=BASE_SYSTEMS,
            help=(
                "system slot when it holds no persona: an explicit empty message (default) or the template's own "
                "default"
            ),
        )
    add_personas_file(group, "; --persona may name them")
    # the shell runs a parser's ``checks`` after parsing, before the command (so before any model loads)
    parser.set_defaults(persona_options=options)
    add_check(parser, resolve_persona)


def resolve_persona(args: argparse.Namespace) -> None:
    """The one check of the persona options, for commands that declared them: sets
    ``args.condition`` (a ``Condition``) and ``args.library`` (built-in personas plus
    ``--personas-file``).

    Raises:
        ToolkitError: an unknown persona, a special persona the command does not take, or a bad
            personas file.
    """
    options = getattr(args, "persona_options", None)
    if options is None:
        return
    read_library(args)
    if args.persona in SPECIAL_PERSONAS:
        if args.persona not in options.specials:
            allowed = " or ".join(repr(name) for name in options.specials)
            raise ToolkitError(
                f"--persona {args.persona} does not apply here: give a persona name or {allowed} (see `prism personas`)"
            )
    else:
        get_persona(args.persona, args.library)
    args.condition = Condition(args.persona, args.length, args.placement, getattr(args, "base_system", "empty"))


def sample_items(args: argparse.Namespace):
    """The ``--dataset`` items, ``-n`` of them stratified by category (``--seed``)."""
    return stratified_sample(load_dataset(args.dataset), args.n, seed=args.seed)


def csv_list(text: str | None) -> list[str] | None:
    """The non-empty items of a comma-separated option (None when not given)."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def layer_list(text: str | None) -> list[int] | None:
    """Block indices from a ``--layers`` value (None when not given)."""
    if not text:
        return None
    try:
        return [int(layer) for layer in csv_list(text)]
    except ValueError as error:
        raise ToolkitError(f"--layers takes comma-separated integers, got {text!r}") from error


def load_timed(args: argparse.Namespace):
    """``load_model`` with ``--model``, ``--device``, ``--dtype`` and ``--device-map`` (SDPA attention), saying on
    stderr what was loaded and how long it took."""
    start = time.perf_counter()
    model, tokenizer = load_model(
        args.model, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None)
    )
    where = precision(model)
    spread = f", device map {args.device_map}" if getattr(args, "device_map", None) else ""
    log.info(
        f"loaded {model.cfg.model_name} ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}, {where['dtype']} on "
        f"{where['device']}{spread}, {where['attention']} attention) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return model, tokenizer
