"""Secrets never leave the process: one scrubber for every text bound for the log, an exception or a log line.

The router builds a :class:`Scrubber` from the API keys its models read from the environment. It
removes each key wherever it appears (also with the whitespace a key file may add around it) and
any ``Authorization:`` or ``Bearer`` value, whatever key it carries, since a gateway may echo a
header of a key this process never configured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

__all__ = ["Scrubber", "REDACTED", "read_key"]

REDACTED = "[REDACTED]"

#: header-shaped secrets: ``Authorization: <anything to the end of the value>`` and ``Bearer <token>``
_HEADERS = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]*|(bearer\s+)[^\s\"',}]+|(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+|(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
)


#: a word every header-shaped secret starts with, lower-cased: ASCII text without one needs no regex scan
_HEADER_WORDS = ("authorization", "bearer", "api")


def _may_hold_header(text: str) -> bool:
    """Whether ``_HEADERS`` may match: always for non-ASCII text (Unicode case folding), else only
    if a header word appears (a plain substring scan, many times faster than the regex)."""
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(word in lowered for word in _HEADER_WORDS)


def _keep_label(match: re.Match[str]) -> str:
    label = next(g for g in match.groups() if g is not None)
    return label + REDACTED


class Scrubber:
    """Removes configured keys and header-shaped secrets from text."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        # longest first, so a key that contains another is removed whole
        self.keys = sorted({k for key in keys for k in (key, key.strip()) if k.strip()}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """The text with every secret replaced by ``[REDACTED]``."""
        for key in self.keys:
            if key in text:
                text = text.replace(key, REDACTED)
        return _HEADERS.sub(_keep_label, text) if _may_hold_header(text) else text

    def finds(self, text: str) -> bool:
        """Whether the text holds a key or a header-shaped secret: False means ``self(text)`` returns it
        unchanged, also for each of several texts joined into one (a match in a part is one in the whole)."""
        return any(key in text for key in self.keys) or (_may_hold_header(text) and _HEADERS.search(text) is not None)

    def __repr__(self) -> str:
        return f"Scrubber({len(self.keys)} keys)"

    @classmethod
    def from_env(cls, names: Iterable[str | None], environ: Mapping[str, str] = os.environ) -> Scrubber:
        """A scrubber for the keys held in these environment variables (unset ones are skipped)."""
        return cls(environ[n] for n in names if n and environ.get(n))


def read_key(name: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key in environment variable ``name``, stripped of surrounding whitespace (None if unset or blank)."""
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()
