"""Persona conditions (which persona, at which length, in which placement), rendered through the model's chat template.

"No persona" has two meanings and both are offered: see ``Condition``'s ``base_system``. How the
question and the answer's opening are laid out is the prompt format (``probes.core.formats``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from probes.core.errors import ToolkitError
from probes.core.formats import DEFAULT_FORMAT, get_format
from probes.core.personas import Persona, builtin_personas, check_length, get_persona

PLACEMENTS = ("system", "user")
BASE_SYSTEMS = ("empty", "template")
NO_PERSONA = "none"
RANDOM_PERSONA = "random"
EXPERT_PERSONA = "expert"
# Query categories whose expert persona is not literally named after them.
CATEGORY_ALIASES = {"STEM": "stem", "humanities": "humanities"}


@dataclass(frozen=True)
class Condition:
    """One persona condition: which persona (or none), at which length, in which placement.

    Args:
        persona: a library name, ``"none"``, ``"expert"`` (the persona matched to the item's category) or ``"random"``
            (a domain persona other than the matched one, chosen per item).
        length: the persona text's length: ``min``, ``short`` or ``long``.
        placement: ``system`` (the system message) or ``user`` (before the query in the user message).
        base_system: ``empty`` sends an explicit empty system message (the paper's No-Sys baseline), ``template`` none
            (so a template such as SmolLM2's inserts its own default); it also fills the system slot of user placement.

    Raises:
        ToolkitError: an unknown length, placement or base system.
    """

    persona: str = NO_PERSONA
    length: str = "min"
    placement: str = "system"
    base_system: str = "empty"

    def __post_init__(self) -> None:
        check_length(self.length)
        if self.placement not in PLACEMENTS:
            raise ToolkitError(f"unknown placement {self.placement!r}: use one of {', '.join(PLACEMENTS)}")
        if self.base_system not in BASE_SYSTEMS:
            raise ToolkitError(f"unknown base system {self.base_system!r}: use one of {', '.join(BASE_SYSTEMS)}")

    @property
    def label(self) -> str:
        if self.persona == NO_PERSONA:
            return f"none[{self.base_system}]"
        return f"{self.persona}/{self.length}/{self.placement}[{self.base_system}]"

    @property
    def slug(self) -> str:
        """The label as a file name: ``math-min-system-empty``."""
        if self.persona == NO_PERSONA:
            return f"none-{self.base_system}"
        return f"{self.persona}-{self.length}-{self.placement}-{self.base_system}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as the model sees it, with what was actually done to build it.

    Args:
        text, condition: the rendered text (chat template applied, answer prefix appended) and its condition.
        persona, placement: the persona used and where it went, after any fallback; None without a persona.
        persona_span, query_span: ``(start, end)`` character spans in ``text`` of the persona text (or None) and query.
        add_special_tokens: whether tokenising ``text`` must add BOS (False when the template wrote it).
        item_id, messages: the item's id (or ""), and the ``(role, content)`` pairs ``text`` was rendered from.
        prompt_format: the prompt format's name (``probes.core.formats``).
    """

    text: str
    condition: Condition
    persona: str | None  # the persona used ("random" resolved), None without one
    placement: str | None  # where the persona went after any fallback, None without one
    persona_span: tuple[int, int] | None  # character span of the persona text in ``text``
    query_span: tuple[int, int]  # character span of the query in ``text``
    add_special_tokens: bool  # False when the chat template already wrote BOS
    item_id: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs the text was rendered from
    prompt_format: str = DEFAULT_FORMAT

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def metadata(self) -> dict:
        return {
            "item_id": self.item_id,
            "condition": self.condition.to_dict(),
            "persona": self.persona,
            "placement": self.placement,
        }


def render(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    condition: Condition = Condition(),
    *,
    personas: Mapping[str, Persona] | None = None,
    item_id: str = "",
    item_category: str | None = None,
    answer_prefix: str = "",
    seed: int = 0,
    prompt_format: str = DEFAULT_FORMAT,
) -> RenderedPrompt:
    """Render ``query`` under ``condition`` through the tokenizer's chat template.

    Args:
        tokenizer: the model's tokenizer; a template without a system role gets the persona in the user message.
        query, condition: the user's text and its persona condition (default: no persona, empty system message).
        personas, seed: a persona library in place of the built-in one; the random persona's seed.
        item_id, item_category: the item's id (recorded; it seeds the draw of the random persona) and category
            (it picks the ``expert`` persona, and the ``random`` one avoids that match).
        answer_prefix: text that begins the assistant turn (e.g. ``"Answer:"``).
        prompt_format: how the query and the answer prefix are laid out (``plain``: as given; ``qa``: labelled).

    Returns:
        the ``RenderedPrompt`` (its ``placement`` says where the persona went after any fallback).

    Raises:
        ToolkitError: an empty query, an unknown persona, length or format, no expert for ``item_category`` or random
            persona.
    """
    if not isinstance(query, str) or not query.strip():
        raise ToolkitError(f"empty prompt{f' (item {item_id})' if item_id else ''}: every query needs text")
    layout = get_format(prompt_format)
    library = builtin_personas() if personas is None else personas
    persona = _resolve_persona(condition, library, item_id, item_category, seed)
    persona_text = persona.text(condition.length) if persona else None
    placement = condition.placement if persona else None
    if placement == "system" and not supports_system_role(tokenizer):
        placement = "user"

    system: str | None = "" if condition.base_system == "empty" else None
    user = layout.question(query)
    if placement == "system":
        system = persona_text
    elif placement == "user":
        user = f"{persona_text}\n\n{user}"
    if system is not None and not supports_system_role(tokenizer):
        system = None

    messages = _messages(system, user)
    text, special = _apply_template(tokenizer, messages, layout.separator)
    text += layout.answer(answer_prefix)
    persona_span = None
    if persona_text is not None:
        start = text.index(persona_text)
        persona_span = (start, start + len(persona_text))
    query_start = text.index(query, persona_span[1] if persona_span else 0)
    return RenderedPrompt(
        text=text,
        condition=condition,
        persona=persona.name if persona else None,
        placement=placement,
        persona_span=persona_span,
        query_span=(query_start, query_start + len(query)),
        add_special_tokens=special,
        item_id=item_id,
        messages=messages,
        prompt_format=layout.name,
    )


def render_messages(
    tokenizer: PreTrainedTokenizerBase, system: str | None, user: str, *, answer_prefix: str = ""
) -> RenderedPrompt:
    """A plain system + user exchange (no persona condition), e.g. a judge's prompt."""
    if not user.strip():
        raise ToolkitError("empty prompt: every query needs text")
    if system is not None and not supports_system_role(tokenizer):
        user, system = (f"{system}\n\n{user}" if system else user), None
    messages = _messages(system, user)
    text, special = _apply_template(tokenizer, messages)
    start = text.index(user)
    return RenderedPrompt(
        text=text + answer_prefix,
        condition=Condition(),
        persona=None,
        placement=None,
        persona_span=None,
        query_span=(start, start + len(user)),
        add_special_tokens=special,
        messages=messages,
    )


def matched_persona(category: str | None, library: Mapping[str, Persona]) -> str | None:
    """The persona whose expertise matches a query category, if the library has one."""
    if category is None:
        return None
    for persona in library.values():
        if persona.category is not None and persona.category == category:
            return persona.name
    alias = CATEGORY_ALIASES.get(category)
    return alias if alias in library else None


def _resolve_persona(
    condition: Condition, library: Mapping[str, Persona], item_id: str, category: str | None, seed: int
) -> Persona | None:
    if condition.persona == NO_PERSONA:
        return None
    matched = matched_persona(category, library)
    if condition.persona == EXPERT_PERSONA:
        if matched is None:
            raise ToolkitError(
                f"no expert persona matches category {category!r}{f' (item {item_id})' if item_id else ''}"
            )
        return library[matched]
    if condition.persona != RANDOM_PERSONA:
        return get_persona(condition.persona, library)
    pool = sorted(
        name
        for name, persona in library.items()
        if persona.kind == "domain" and name != matched and condition.length in persona.texts
    )
    if not pool:
        raise ToolkitError("no persona is left for the random control: the library needs two domain personas")
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return library[random.Random(digest).choice(pool)]


def _messages(system: str | None, user: str) -> tuple[tuple[str, str], ...]:
    return ((("system", system),) if system is not None else ()) + (("user", user),)


def _apply_template(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]], end: str = "\n\n"
) -> tuple[str, bool]:
    if not getattr(tokenizer, "chat_template", None):
        # A base model without a chat template: plain text (``end`` after the last message), the tokenizer adds BOS.
        return "\n\n".join(content for _, content in messages if content) + end, True
    chat = [{"role": role, "content": content} for role, content in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return text, False


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, first: RenderedPrompt, response: str, follow_up: str, *, more: Sequence = ()
) -> RenderedPrompt:
    """The prompt for a later turn: ``first``'s messages, ``response``, ``follow_up``, then each (response, follow-up)
    pair of ``more``, rendered in one pass of the template (linear in the conversation's length)."""
    exchanges = ((response, follow_up), *more)
    if not all(turn.strip() for _, turn in exchanges):
        raise ToolkitError("empty follow-up turn: every turn needs text")
    messages = tuple(first.messages) + tuple(m for pair in exchanges for m in zip(("assistant", "user"), pair))
    text, special = _apply_template(tokenizer, messages)
    start = text.rindex(exchanges[-1][1])
    return replace(
        first,
        text=text,
        query_span=(start, start + len(exchanges[-1][1])),
        add_special_tokens=special,
        messages=messages,
    )


def supports_system_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template accepts a system message and shows its text."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    if template not in _SYSTEM_ROLE_SUPPORT:
        marker = "Zq9 system marker"
        messages = [{"role": "system", "content": marker}, {"role": "user", "content": "hello"}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            _SYSTEM_ROLE_SUPPORT[template] = marker in text
        except Exception:  # templates signal "no system role" by raising inside Jinja
            _SYSTEM_ROLE_SUPPORT[template] = False
    return _SYSTEM_ROLE_SUPPORT[template]


_SYSTEM_ROLE_SUPPORT: dict[str, bool] = {}


def encode(tokenizer: PreTrainedTokenizerBase, prompt: RenderedPrompt) -> list[int]:
    """Token ids of a rendered prompt, with BOS only where the template did not write it.

    Args:
        tokenizer, prompt: the rendered prompt and the tokenizer it was rendered with.

    Returns:
        the token ids, a list of ints.
    """
    return tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]


def token_groups(tokenizer: PreTrainedTokenizerBase, prompt: RenderedPrompt) -> dict[str, list[int]]:
    """Token positions of a rendered prompt by role: ``persona`` (the persona text), ``query`` (the query text),
    ``after_query`` (template and answer stem after the query) and ``final`` (the last token)."""
    encoded = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if not offsets:
        raise ToolkitError("the prompt tokenises to nothing")

    def inside(span: tuple[int, int] | None) -> list[int]:
        if span is None:
            return []
        return [i for i, (start, end) in enumerate(offsets) if end > span[0] and start < span[1] and end > start]

    query = inside(prompt.query_span)
    after = [i for i in range(query[-1] + 1, len(offsets))] if query else []
    return {"persona": inside(prompt.persona_span), "query": query, "after_query": after, "final": [len(offsets) - 1]}
