"""A decoded row's text as its tokens arrive: what can be shown now, and the final text.

``TextStream`` holds back what a stop string or the final strip could still take away, so what a
stream has shown is always a prefix of the final text (``prism.server.decoding`` makes the tokens).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["TextStream"]


class TextStream:
    """One row's text as its tokens arrive: the decoded tokens (special tokens dropped), cut at the first stop string.

    ``push(token)`` returns the text that can be shown now and whether a stop string ended the text; ``text`` is the
    final text (stripped of surrounding whitespace with ``strip``, as the toolkit's ``generate`` strips its answers).
    What ``push`` returned, joined, is always a prefix of ``text``: it holds back trailing whitespace (with ``strip``),
    an incomplete character and any tail that could begin a stop string.

    Args:
        tokenizer: decodes the tokens.
        stop: the stop strings.
        strip: strip whitespace around the text (chat answers); keep it as generated otherwise (completions).
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), *, strip: bool = True) -> None:
        self.tokenizer, self.stop, self.strip = tokenizer, tuple(stop), strip
        self.tokens: list[int] = []
        self.shown = ""
        self.stopped = False

    def _visible(self) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        text = text.lstrip() if self.strip else text
        cuts = [text.find(stop) for stop in self.stop if stop in text]
        if cuts:
            self.stopped = True
            text = text[: min(cuts)]
        return text

    @property
    def text(self) -> str:
        """The final text of the tokens so far."""
        text = self._visible()
        return text.rstrip() if self.strip else text

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; (the newly showable text, whether a stop string has ended the text)."""
        self.tokens.append(token)
        text = self._visible()
        text = text.rstrip() if self.strip else text
        if not self.stopped:
            text = text.rstrip("\ufffd")  # an incomplete UTF-8 character
            held = max((n for stop in self.stop for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
            text = text[: len(text) - held]
            text = text.rstrip() if self.strip else text
        return self._show(text), self.stopped

    def finish(self) -> str:
        """The rest of the final text, not shown yet."""
        return self._show(self.text)

    def _show(self, text: str) -> str:
        if not text.startswith(self.shown) or len(text) <= len(self.shown):
            return ""
        new, self.shown = text[len(self.shown) :], text
        return new
