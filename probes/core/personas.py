"""The persona library: twelve personas, each written at three lengths, plus user personas."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Mapping

from probes.core.errors import ToolkitError

LENGTHS = ("min", "short", "long")
BUILTIN_FILE = "persona_library.json"


@dataclass(frozen=True)
class Persona:
    """A persona: a name, the query category it is the expert for (if any), and its texts.

    Args:
        name: the library name (``"none"``, ``"random"`` and ``"expert"`` are reserved).
        texts: persona text by length (``min``, ``short``, ``long``; at least one).
        category: the query category it is the expert for, or None.
        kind: ``"domain"`` (an expert; the random control draws from these) or another kind, e.g. behavioural.
        source: where it was read from (``"builtin"`` or a file path); not part of equality.
    """

    name: str
    texts: Mapping[str, str]
    category: str | None = None
    kind: str = "domain"
    source: str = field(default="builtin", compare=False)

    def text(self, length: str) -> str:
        check_length(length)
        if length not in self.texts:
            raise ToolkitError(f"persona {self.name!r} has no {length!r} text; it has: {', '.join(self.texts)}")
        return self.texts[length]

    def to_dict(self) -> dict:
        """The persona as an entry of a persona file (the schema ``load_personas`` reads)."""
        return {"name": self.name, **self.texts, "category": self.category, "kind": self.kind}


def check_length(length: str) -> None:
    """Refuse, in one line, a persona length that is not one of ``LENGTHS``."""
    if length not in LENGTHS:
        raise ToolkitError(f"unknown persona length {length!r}: use one of {', '.join(LENGTHS)}")


def builtin_personas() -> dict[str, Persona]:
    """The twelve personas written for this toolkit (8 MT-Bench domains + 4 behavioural)."""
    return dict(_builtin_library())


@lru_cache(maxsize=1)
def _builtin_library() -> dict[str, Persona]:
    text = files("probes.core").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    return parse_personas(json.loads(text), origin="builtin")


def load_personas(path: str | Path) -> dict[str, Persona]:
    """Read user personas from a JSON file shaped like the built-in library.

    Schema: ``{"personas": [{"name": str, "min"|"short"|"long": str (at least one),
    "category": str | null (optional), "kind": str (optional)}]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"no persona file at {path}: check the path")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ToolkitError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from error
    except UnicodeDecodeError as error:
        raise ToolkitError(f"{path}: not UTF-8 text (byte {error.start}): save the file as UTF-8") from None
    return parse_personas(payload, origin=str(path))


def persona_library(extra_file: str | Path | None = None) -> dict[str, Persona]:
    """Built-in personas, plus those in ``extra_file`` (which may override a built-in name).

    Args:
        extra_file: a JSON file of user personas shaped like the built-in library (see ``load_personas``), or None.

    Returns:
        persona name -> ``Persona``, the built-in twelve first.

    Raises:
        ToolkitError: ``extra_file`` is missing, not valid JSON, or breaks the schema (no name, no text,
            a reserved or repeated name).
    """
    library = builtin_personas()
    if extra_file is not None:
        library.update(load_personas(extra_file))
    return library


def user_personas(library: Mapping[str, Persona]) -> dict[str, Persona]:
    """The personas of ``library`` that a user added (read from a file, not built in), by name."""
    return {name: persona for name, persona in library.items() if persona.source != "builtin"}


def get_persona(name: str, library: Mapping[str, Persona] | None = None) -> Persona:
    """Look up one persona by name.

    Args:
        name: the persona's library name.
        library: persona name -> ``Persona`` (default: the built-in personas).

    Returns:
        the persona.

    Raises:
        ToolkitError: ``library`` has no persona called ``name``.
    """
    library = builtin_personas() if library is None else library
    if name not in library:
        raise ToolkitError(f"unknown persona {name!r}: use one of {', '.join(library)}")
    return library[name]


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _category(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ToolkitError(
            f"{where}: 'category' must be a string (an MT-Bench category) or null, got {type(value).__name__}"
        )
    return value


def parse_personas(payload: object, origin: str) -> dict[str, Persona]:
    """Personas from a persona file's parsed JSON (the schema of ``load_personas``).

    Args:
        payload: the parsed JSON: ``{"personas": [...]}``.
        origin: where it was read from; each persona's ``source`` and every error message name it.

    Returns:
        persona name -> ``Persona``, in the file's order.

    Raises:
        ToolkitError: the schema is broken (no name, no text, a reserved, repeated or unusable name, ...).
    """
    entries = payload.get("personas") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ToolkitError(f"{origin}: expected an object with a non-empty 'personas' list")
    library: dict[str, Persona] = {}
    for index, entry in enumerate(entries):
        where = f"{origin}: persona #{index + 1}"
        if not isinstance(entry, dict):
            raise ToolkitError(f"{where} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ToolkitError(f"{where} has no 'name'")
        if name in ("none", "random", "expert") or name in library:
            raise ToolkitError(f"{where}: name {name!r} is reserved or repeated")
        if not NAME.fullmatch(name):  # names become file and folder names
            raise ToolkitError(
                f"{where}: name {name!r} may hold only letters, digits, '_' and '-' (at most 64, "
                "starting with a letter or digit)"
            )
        texts = {length: entry[length] for length in LENGTHS if length in entry}
        if not texts:
            raise ToolkitError(f"{where} ({name}) has none of the texts {', '.join(LENGTHS)}")
        for length, text in texts.items():
            if not isinstance(text, str) or not text.strip():
                raise ToolkitError(f"{where} ({name}): the {length!r} text is empty")
        library[name] = Persona(
            name=name,
            texts={length: text.strip() for length, text in texts.items()},
            category=_category(entry.get("category"), where),
            kind=entry.get("kind", "domain"),
            source=origin,
        )
    return library
