"""A model's tokenizer alone, for work whose model runs in another process (an inference engine)."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from probes.core.errors import ToolkitError
from probes.core.models import DEFAULT_MODEL, resolve_model_directory

__all__ = ["load_tokenizer"]


def load_tokenizer(name: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """Model ``name``'s tokenizer alone, as ``load_model`` gives it, for work whose model runs in another process."""
    directory, label = resolve_model_directory(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as error:
        raise ToolkitError(f"could not load the tokenizer of {label!r} ({str(error)[:200]})") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
