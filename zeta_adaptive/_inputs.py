"""Checks on what a caller passes to a call, made before anything is sent, logged or learned.

Every problem raises :class:`InvalidRequest` naming the argument (``messages[2].content``,
``texts[0]``, ``deadline_s``, a keyword argument) and what is wrong with it. Nested structures are
walked iteratively with a depth bound, so a hostile input cannot raise ``RecursionError`` here or
later, when the request is serialised to JSON.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._exceptions import InvalidRequest

__all__ = [
    "ROLES",
    "MAX_DEPTH",
    "check_messages",
    "check_params",
    "check_texts",
    "check_deadline",
    "check_task_type",
    "check_stream",
    "prompt_band",
]

#: the message roles OpenAI-compatible servers know
ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
#: how deeply messages and parameters may nest (JSON schemas of tools included)
MAX_DEPTH = 64
#: keyword arguments that look like router options, never OpenAI parameters: name -> what to use instead
ROUTER_LOOKALIKES = {
    **dict.fromkeys(["deadline", "deadline_ms", "timeout", "timeout_s"], "deadline_s"),
    **dict.fromkeys(["task", "route"], "task_type"),
    "streaming": "stream",
    **dict.fromkeys(["features", "policy", "model", "fallbacks", "max_attempts"], ""),
}
#: prompt-length bands, by character count: a model that exceeded its context in one band is
#: demoted for prompts of that band and longer ones
BAND_EDGES = (2_000, 8_000, 32_000, 128_000)


def check_deadline(value: Any) -> None:
    """A per-call deadline is None (the config's) or a positive finite number of seconds, not a bool."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"deadline_s must be a positive finite number of seconds, got {value!r}")


def check_task_type(value: Any, required: bool = False) -> None:
    """A task type is a route name (a string), or None to let the classifier choose (chat only)."""
    if (value is None and not required) or isinstance(value, str):
        return
    raise InvalidRequest(
        f"task_type must be a route name (str){'' if required else ' or None'}, got {type(value).__name__}"
    )


def check_messages(messages: Any) -> int:
    """Check a chat message list; return the characters of its text content (for the length band).

    A message list is a non-empty list (or tuple) of dicts, each with a known ``role`` and a
    ``content`` that is a string or a list of content parts (dicts with a ``type``); only an
    assistant message that carries ``tool_calls`` (or ``function_call``) may have no content.
    """
    if isinstance(messages, str):
        raise InvalidRequest(
            "messages must be a list of message dicts, got a str: wrap it as [{'role': 'user', 'content': ...}]"
        )
    if type(messages) is not list and (
        isinstance(messages, (bytes, bytearray, Mapping)) or not isinstance(messages, Sequence)
    ):
        raise InvalidRequest(f"messages must be a list of message dicts, got {type(messages).__name__}")
    if not messages:
        raise InvalidRequest("messages is empty: a call needs at least one message")
    chars = 0
    # a list of messages that are each exactly {"role": ..., "content": ASCII text} is JSON as checked here
    plain = isinstance(messages, (list, tuple))
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if type(message) is not dict and not isinstance(message, Mapping):
            raise InvalidRequest(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            plain = plain and type(message) is dict and len(message) == 2 and content.isascii()
        elif isinstance(content, (list, tuple)):
            if not content:
                raise InvalidRequest(f"{where}.content is an empty list of content parts")
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str) or not part["type"]:
                    raise InvalidRequest(f"{where}.content[{j}] must be a content part: a dict with a 'type' string")
                text = part.get("text")
                if part["type"] == "text" and not isinstance(text, str):
                    raise InvalidRequest(f"{where}.content[{j}] is a text part without a 'text' string")
                chars += len(text) if isinstance(text, str) else 0
            plain = False
        elif content is None:
            if not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
                raise InvalidRequest(
                    f"{where}.content is missing or None; only an assistant message with tool_calls may have none"
                )
            plain = False
        else:
            raise InvalidRequest(
                f"{where}.content must be a string or a list of content parts, got {type(content).__name__}"
            )
    if not plain:  # a plain message's keys, role and text are JSON already
        _check_json("messages", messages)
    return chars


def check_params(params: Mapping[str, Any]) -> None:
    """Keyword arguments go to the backend as OpenAI parameters: refuse router look-alikes and non-JSON values."""
    for key in params:
        if key in ROUTER_LOOKALIKES or key.endswith("_s"):
            instead = ROUTER_LOOKALIKES.get(key) or ""
            hint = f"; did you mean {instead}?" if instead and instead != key else ""
            raise InvalidRequest(
                f"{key!r} looks like a router option, not an OpenAI parameter{hint} "
                "(router options: task_type, stream, deadline_s; the router chooses the model)"
            )
    if params.get("n", 1) not in (1, None):  # the backend would make (and bill) n answers, the caller get one
        raise InvalidRequest(
            f"n={params['n']!r}: a routed call returns one answer; make several calls for several answers"
        )
    if params.get("logprobs") or params.get("top_logprobs") is not None:  # else asked for and silently dropped
        raise InvalidRequest("logprobs: a routed call returns the answer's text and tool calls, not log probabilities")
    _check_json("parameters", params)


def check_stream(value: Any) -> None:
    """``stream`` is True or False."""
    if not isinstance(value, bool):
        raise InvalidRequest(f"stream must be True or False, got {value!r}")


def check_texts(texts: Any) -> list[str]:
    """Embedding inputs: one string or a non-empty list of non-empty strings."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Sequence):
        raise InvalidRequest(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    items = list(texts)
    if not items:
        raise InvalidRequest("texts is empty: embed() needs at least one string")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidRequest(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text:
            raise InvalidRequest(f"texts[{i}] is an empty string, which embedding endpoints refuse")
        _check_unicode(f"texts[{i}]", text)
    return items


def _check_unicode(where: str, text: str) -> None:
    """Refuse text that UTF-8 cannot carry: a lone surrogate such as '\\udc00' (json.loads makes them)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"{where} holds text that is not valid Unicode (a lone surrogate such as '\\udc00')"
            ) from None


def prompt_band(chars: int) -> int:
    """The prompt-length band of a prompt of ``chars`` characters: 0 (< 2,000) up to 4 (>= 128,000)."""
    return bisect.bisect_right(BAND_EDGES, chars)


def _check_json(where: str, value: Any) -> None:
    """Refuse what cannot be sent as JSON: other types, non-string keys, NaN or infinity, nesting past MAX_DEPTH.

    Exact dicts, lists and strings, which calls are made of, are told apart by their type before the
    slower abstract checks (``Mapping``) that other containers need."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str or isinstance(item, str):
            if not item.isascii():
                _check_unicode(where, item)
            continue
        if kind is int or kind is bool or item is None or isinstance(item, int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"{where} holds {item!r}, which JSON cannot carry")
            continue
        if depth >= MAX_DEPTH:
            raise InvalidRequest(f"{where} is nested deeper than {MAX_DEPTH} levels")
        if kind is dict or isinstance(item, Mapping):
            for key, child in item.items():
                if type(key) is not str and not isinstance(key, str):
                    raise InvalidRequest(f"{where} has a non-string key {key!r}")
                if not key.isascii():
                    _check_unicode(where, key)
                stack.append((child, depth + 1))
        elif kind is list or isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
        else:
            raise InvalidRequest(
                f"{where} holds a {type(item).__name__}, which is not JSON (str, number, bool, None, list, dict)"
            )
