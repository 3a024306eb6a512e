"""PRISM stages 1-3: the model writes its own queries, answers them with and without the matched persona, and judges the
pair.

1. Queries: for each persona, sampled requests that persona would answer well (T=0.9; the first line is kept, lines
   under ``MIN_QUERY_CHARS`` and duplicates are dropped; sampling rounds repeat until each persona has its quota or
   ``max_rounds`` is spent).
2. Answers: without a persona (explicit empty system message) and with the persona (T=0.7).
3. Verification: a forced choice between the two answers, asked twice with the positions swapped; the persona wins
   only if it wins both orders (label 1, "distill"), else label 0 ("retain"). The choice is read from the
   log-probabilities of " A" and " B", so it costs one forward pass and no parsing.

Everything runs on an engine (``interventions.measure.engines``): the hooked model (``hf``, the default) or vLLM, where
the verdict's letters are read from the prompt log-probabilities of the prompt followed by each letter (``echo``). The
ledger keys of a non-``hf`` engine name it, so a run resumed on another engine does not mix their samples.

Every sampled text and every verdict goes to a ledger as its batch ends, so an interrupted run resumes where it
stopped; ``samples.jsonl`` and ``summary.json`` are written at the end.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from interventions.measure.engines import Engine, HFEngine, engine_key
from interventions.study.ledger import Ledger, work_key
from prism.samples import Sample, write_samples
from prism.summary import BootstrapSummary
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.parallel import world
from probes.core.personas import Persona, builtin_personas, get_persona
from probes.core.prompts import Condition, render, render_messages

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

MIN_QUERY_CHARS = 15
QUERY_REQUEST = (
    "Write one question or request that a user might bring to you, one that your expertise lets you "
    "answer especially well. Write only the question, on one line."
)
VERDICT_REQUEST = (
    "Here is a user's request and two responses to it.\n\nRequest: {query}\n\nResponse A: {first}\n\n"
    "Response B: {second}\n\nWhich response is more helpful, accurate and appropriate? Answer A or B."
)
VERDICT_PREFIX = "The better response is"


@dataclass(frozen=True)
class BootstrapConfig:
    """Settings of the bootstrap (stages 1-3).

    Args:
        queries_per_persona: distinct queries to keep per persona (at least 1).
        persona_length: the persona texts' length (``min``, ``short`` or ``long``) for the queries and answers.
        query_tokens, answer_tokens: the most tokens generated for a query and for an answer.
        query_temperature, answer_temperature: sampling temperatures of the queries and of the answers.
        max_rounds: query sampling rounds at most, each topping up the personas short of their quota.
        seed: the sampling seed.
        batch_size: prompts per forward pass.
    """

    queries_per_persona: int = 8
    persona_length: str = "min"
    query_tokens: int = 40
    answer_tokens: int = 64
    query_temperature: float = 0.9
    answer_temperature: float = 0.7
    max_rounds: int = 4
    seed: int = 0
    batch_size: int = 8


def run_bootstrap(
    out: str | Path | PrismDirectory,
    model: TransformerBridge,
    tokenizer,
    *,
    config: BootstrapConfig = BootstrapConfig(),
    personas: Sequence[str] | None = None,
    library: Mapping[str, Persona] | None = None,
    progress: bool = True,
    engine: Engine | None = None,
) -> BootstrapSummary:
    """Stages 1-3 for ``personas``, resumable.

    Args:
        out: the PRISM working directory; everything goes to its ``bootstrap/`` folder (the
            ledger, ``samples.jsonl``, ``summary.json``, ``win_rates.csv``).
        model, tokenizer: the bridged model (None with an ``engine``) and its tokenizer.
        config: query, answer and verdict settings.
        personas: names in ``library`` of the personas whose queries the model writes (default: every persona in it).
        library: the persona library (default: the built-in twelve). Samples name their persona: whoever renders it
            later needs the same library (``PrismDirectory.persona_library``).
        progress: show progress bars.
        engine: what generates and scores (default: ``model``, ``HFEngine``).

    Returns:
        the ``BootstrapSummary`` (win rates overall and per persona, as in ``summary.json``) with ``samples``, one per
        kept query.

    Raises:
        ToolkitError: an unknown persona or persona length, ``queries_per_persona`` below 1, or no usable query.
    """
    work = PrismDirectory(out)
    library = builtin_personas() if library is None else library
    chosen = chosen_personas(personas, library, config.persona_length)
    if config.queries_per_persona < 1:
        raise ToolkitError(f"queries per persona must be at least 1, got {config.queries_per_persona}")
    group = world()
    ledger = Ledger(work.bootstrap_ledger, world=group)
    progress = progress and group.is_main
    engine = engine or HFEngine(model, tokenizer)
    queries = _queries(engine, tokenizer, [library[name] for name in chosen], config, ledger, progress)
    samples = _answers_and_verdicts(engine, tokenizer, queries, library, config, ledger, progress)
    # every rank has every sample; rank 0 writes them
    summary = group.on_main(lambda: write_samples(work, samples, {"config": asdict(config)}, seed=config.seed))
    return BootstrapSummary.from_record(summary, samples)


def chosen_personas(personas: Sequence[str] | None, library: Mapping[str, Persona], length: str) -> list[str]:
    """The names of the personas to bootstrap, checked: each in ``library`` with a text at ``length``.

    Args:
        personas: persona names (None: every persona in ``library`` with a ``length`` text; those without are left out
            with a warning).
        library: the persona library.
        length: the persona texts' length (``BootstrapConfig.persona_length``).

    Returns:
        the names, in order.

    Raises:
        ToolkitError: a named persona not in ``library``, or one without a ``length`` text.
    """
    if personas is None:
        lacking = [name for name, persona in library.items() if length not in persona.texts]
        if lacking:
            log.warning(f"persona(s) {', '.join(lacking)} have no {length!r} text: they are left out")
        return [name for name in library if name not in lacking]
    for name in personas:
        get_persona(name, library).text(length)
    return list(personas)


def clean_query(text: str) -> str | None:
    """The first non-empty line of a sampled query, without list marks or quotes; None if too short."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\d.)]+\s+|(?:question|request|q)\s*:\s*)", "", line, flags=re.IGNORECASE).strip()
        line = line.strip("\"'` ").strip()
        if line:
            return line if len(line) >= MIN_QUERY_CHARS else None
    return None


def _queries(
    engine: Engine, tokenizer, personas: Sequence[Persona], config: BootstrapConfig, ledger: Ledger, progress: bool
) -> list[tuple[str, str]]:
    """(persona, query) pairs: up to ``queries_per_persona`` distinct queries per persona."""
    found: dict[str, list[str]] = {persona.name: [] for persona in personas}
    for round_ in range(config.max_rounds):
        short = [p for p in personas if len(found[p.name]) < config.queries_per_persona]
        if not short:
            break
        requests = []
        for persona in short:
            missing = config.queries_per_persona - len(found[persona.name])
            for k in range(missing + (missing + 1) // 2):  # oversample: some are dropped
                requests.append((persona, k))
        prompts = [
            render_messages(tokenizer, persona.text(config.persona_length), QUERY_REQUEST) for persona, _ in requests
        ]
        keys = [
            work_key(
                stage="query",
                persona=p.name,
                round=round_,
                k=k,
                seed=config.seed,
                tokens=config.query_tokens,
                temperature=config.query_temperature,
                length=config.persona_length,
                **engine_key(engine),
            )
            for p, k in requests
        ]
        texts = _generate_once(
            engine,
            prompts,
            keys,
            ledger,
            config,
            config.query_tokens,
            config.query_temperature,
            config.seed + 1000 * round_,
            f"queries (round {round_ + 1})",
            progress,
        )
        seen = {query.lower() for queries in found.values() for query in queries}
        for (persona, _), text in zip(requests, texts):
            query = clean_query(text)
            if query and query.lower() not in seen and len(found[persona.name]) < config.queries_per_persona:
                found[persona.name].append(query)
                seen.add(query.lower())
    empty = [name for name, queries in found.items() if not queries]
    if empty:
        log.warning(f"no usable query was sampled for persona(s) {', '.join(empty)}; they are left out")
    return [(name, query) for name, queries in found.items() for query in queries]


def _answers_and_verdicts(
    engine: Engine, tokenizer, queries, library, config: BootstrapConfig, ledger: Ledger, progress: bool
) -> list[Sample]:
    if not queries:
        raise ToolkitError("the model wrote no usable query: raise --queries-per-persona or the query length")
    plain = [render(tokenizer, query, Condition("none")) for _, query in queries]
    personal = [
        render(tokenizer, query, Condition(name, config.persona_length, "system"), personas=library)
        for name, query in queries
    ]
    answers = {}
    for kind, prompts in (("plain", plain), ("persona", personal)):
        keys = [
            work_key(
                stage="answer",
                prompt=p.text,
                seed=config.seed,
                tokens=config.answer_tokens,
                temperature=config.answer_temperature,
                **engine_key(engine),
            )
            for p in prompts
        ]
        answers[kind] = _generate_once(
            engine,
            prompts,
            keys,
            ledger,
            config,
            config.answer_tokens,
            config.answer_temperature,
            config.seed,
            f"answers ({kind})",
            progress,
        )
    verdicts = {}
    for order in ("persona_first", "persona_second"):
        pairs = [(b, a) if order == "persona_first" else (a, b) for a, b in zip(answers["plain"], answers["persona"])]
        prompts = [
            render_messages(
                tokenizer,
                None,
                VERDICT_REQUEST.format(query=query, first=first or "(empty)", second=second or "(empty)"),
                answer_prefix=VERDICT_PREFIX,
            )
            for (_, query), (first, second) in zip(queries, pairs)
        ]
        verdicts[order] = _verdicts(
            engine, prompts, ledger, config, persona_letter=0 if order == "persona_first" else 1, progress=progress
        )
    samples = []
    for index, ((persona, query), plain_answer, persona_answer) in enumerate(
        zip(queries, answers["plain"], answers["persona"])
    ):
        first, second = verdicts["persona_first"][index], verdicts["persona_second"][index]
        samples.append(
            Sample(
                f"{persona}-{index:04d}",
                persona,
                query,
                plain_answer,
                persona_answer,
                first > 0,
                second > 0,
                (first, second),
            )
        )
    return samples


def _generate_once(
    engine: Engine,
    prompts,
    keys,
    ledger: Ledger,
    config: BootstrapConfig,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    label: str,
    progress: bool,
) -> list[str]:
    """Generate what the ledger does not hold yet, a few batches at a time (each seeded by its place), recording
    each; a chunk with anything missing is generated whole, with its seed (``Ledger.unfinished``), so a resumed run
    samples what an uninterrupted one does. Under ``torchrun`` the ranks share the chunks."""
    chunks = [(span.start, list(span)) for span in ledger.unfinished(keys, config.batch_size * 2)]
    with tqdm(
        total=len(ledger.world.share(chunks)), desc=label, unit="chunk", disable=not progress or not chunks
    ) as bar:

        def generate_chunk(chunk: tuple[int, list[int]]) -> list[dict]:
            start, part = chunk
            texts = engine.generate(
                [prompts[i] for i in part],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed + start,
                batch_size=config.batch_size,
                progress=False,
            )
            bar.update(1)
            return [{"key": keys[i], "text": text} for i, text in zip(part, texts) if keys[i] not in ledger]

        ledger.fill(chunks, generate_chunk)
    return [_recorded(ledger, key, "text", lambda text: isinstance(text, str)) for key in keys]


def _verdicts(
    engine: Engine, prompts, ledger: Ledger, config: BootstrapConfig, *, persona_letter: int, progress: bool
) -> list[float]:
    """log p(persona's letter) - log p(the other letter) for each verdict prompt."""
    keys = [work_key(stage="verdict", prompt=p.text, **engine_key(engine)) for p in prompts]
    chunks = [list(span) for span in ledger.unfinished(keys, config.batch_size * 4)]  # each scored whole, as at first
    with tqdm(
        total=sum(map(len, ledger.world.share(chunks))),
        desc="verdicts",
        unit="prompt",
        disable=not progress or not chunks,
    ) as bar:

        def score_chunk(part: list[int]) -> list[dict]:
            scored = engine.option_logprobs(
                [prompts[i] for i in part], [[" A", " B"]] * len(part), batch_size=config.batch_size
            )
            bar.update(len(part))
            return [
                {"key": keys[i], "logprobs": list(logprobs)}
                for i, logprobs in zip(part, scored)
                if keys[i] not in ledger
            ]

        ledger.fill(chunks, score_chunk)
    values = []
    for key in keys:
        logprobs = _recorded(
            ledger, key, "logprobs", lambda pair: isinstance(pair, list) and len(pair) == 2
        )  # " A", " B"
        values.append(float(logprobs[persona_letter] - logprobs[1 - persona_letter]))
    return values


def _recorded(ledger: Ledger, key: str, field: str, valid: Callable[[object], bool]):
    """The ``field`` of the ledger's record ``key``; one line when a record the toolkit did not write lacks a
    ``valid`` one (the bootstrap's ledger holds records of several shapes, so ``Ledger(fields=...)`` cannot check)."""
    value = ledger[key].get(field)
    if not valid(value):
        raise ToolkitError(
            f"{ledger.path}: the record {key!r} has no valid {field!r}, so prism did not write it: "
            "delete that line (its work is done again) and rerun"
        )
    return value
