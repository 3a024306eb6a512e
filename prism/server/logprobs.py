"""Log-probabilities in OpenAI's two formats: the completions API's and the chat API's.

The decoder reports each token as ``(id, log-probability, ((id, log-probability), ...))``: the
token, its log-probability under the model's own distribution, and the most likely tokens at
that position, best first (``prism.server.decoding``). An echoed prompt's first token has none
(``None``).

- Completions (``choices[i].logprobs``): ``tokens`` (each token's text), ``token_logprobs``,
  ``top_logprobs`` (one ``{text: log-probability}`` per token, the most likely ones and the
  token itself; ``null`` for an echoed prompt's first token) and ``text_offset`` (where each
  token's text starts in the choice's text), over the prompt's tokens (with ``echo``) and then
  the generated ones, an end-of-sequence token included, as vLLM reports them.
- Chat (``choices[0].logprobs``): ``{"content": [{"token", "logprob", "bytes", "top_logprobs":
  [{"token", "logprob", "bytes"}, ...]}, ...], "refusal": null}``.

A token's text is its own decoding (special tokens kept), so the texts of a multi-byte
character split over tokens each show a replacement character, as in vLLM.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["chat_logprobs", "completion_logprobs"]

Reported = tuple  # (token id, log-probability, ((id, log-probability), ...)), as the decoder reports a token


def _texts(tokenizer, ids: Sequence[int]) -> dict[int, str]:
    unique = sorted(set(ids))
    return dict(zip(unique, tokenizer.batch_decode([[token] for token in unique], skip_special_tokens=False)))


def completion_logprobs(
    tokenizer, prompt_ids: Sequence[int] | None, prompt: Sequence[Reported | None] | None, generated: Sequence[Reported]
) -> dict:
    """The completions API's ``logprobs`` of a choice: the echoed prompt's tokens (``prompt_ids``, and ``prompt`` as the
    decoder reported them; both None without echo), then the ``generated`` ones (see the module docstring)."""
    rows = [(prompt_ids[0], None, None), *prompt[1:]] if prompt is not None else []
    rows += list(generated)
    texts = _texts(
        tokenizer, [token for token, _, _ in rows] + [other for _, _, best in rows for other, _ in best or ()]
    )
    tokens, values, tops, offsets, offset = [], [], [], [], 0
    for token, value, best in rows:
        tokens.append(texts[token])
        values.append(value)
        offsets.append(offset)
        offset += len(texts[token])
        if value is None:  # the echoed prompt's first token: nothing before it to predict it
            tops.append(None)
            continue
        top = {texts[other]: other_value for other, other_value in best}
        top.setdefault(texts[token], value)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer, generated: Sequence[Reported]) -> dict:
    """The chat API's ``logprobs`` of the answer's tokens (see the module docstring)."""
    texts = _texts(tokenizer, [entry[0] for entry in generated] + [best for entry in generated for best, _ in entry[2]])

    def item(token: int, value: float) -> dict:
        return {"token": texts[token], "logprob": value, "bytes": list(texts[token].encode("utf-8"))}

    return {
        "content": [
            item(token, value) | {"top_logprobs": [item(other, other_value) for other, other_value in best]}
            for token, value, best in generated
        ],
        "refusal": None,
    }
