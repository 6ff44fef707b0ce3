"""Prompt features for per-prompt routing: a sparse, signed, hashed vector computed cheaply from a call's messages.

A :class:`Featurizer` turns messages into :class:`Features` (sorted unique indices and float values)
in a space of ``2**bits`` hashed slots plus a few dense slots:

* hashed word uni- and bi-grams (lower-cased ASCII alphanumeric runs; other bytes separate words,
  bytes >= 128 belong to words), signed hashing so collisions cancel on average, the block scaled
  to unit L2 norm;
* a bias slot (always 1), log-scaled lengths (characters, words, lines), character-class shares
  (digits, upper case, punctuation, whitespace, non-ASCII) and code and math marker counts;
* caller features (``{"name": value}``), hashed by name into the same hashed block.

The hash is a polynomial hash of a word's bytes modulo 2**64 followed by a multiplicative mix,
all in numpy: it is the same in every process and on every platform (no Python ``hash()``
randomisation), and is vectorised (about 30 numpy operations per prompt, whatever its length). Only the text's last
``max_chars`` characters are scanned (the end of a chat is its latest turn). Only indices and
values are ever logged, never the text.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._exceptions import InvalidRequest

__all__ = ["Features", "Featurizer", "DENSE_NAMES", "message_text"]

_P = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so invertible modulo 2**64
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads low-entropy sums over the high bits
_BIGRAM = np.uint64(0xC2B2AE3D27D4EB4F)

# byte -> lower-cased byte for word bytes, 0 for separators (bytes >= 128 are word bytes: UTF-8 text)
_LOWER = bytes((ord(chr(c).lower()) if chr(c).isalnum() else 0) if c < 128 else c for c in range(256))
_CLASSES = ("digit", "upper", "punct", "space", "non_ascii")
_CODE_CHARS = "{};<>[]"
_MATH_CHARS = "=+-*/^$\\%<>"
# byte -> its character classes, then whether it is a code or a math character (one matrix product per text)
_CLASS_OF = np.array(
    [
        [
            chr(c).isdigit() and c < 128,
            chr(c).isupper() and c < 128,
            c < 128 and not chr(c).isalnum() and not chr(c).isspace(),
            chr(c).isspace() and c < 128,
            c >= 128,
            chr(c) in _CODE_CHARS,
            chr(c) in _MATH_CHARS,
        ]
        for c in range(256)
    ],
    dtype=np.float64,
)

DENSE_NAMES: tuple[str, ...] = (
    "bias",
    "log_chars",
    "log_words",
    "log_lines",
    *(f"share_{c}" for c in _CLASSES),
    "code_markers",
    "math_markers",
)


@dataclass(frozen=True, slots=True)
class Features:
    """A sparse feature vector: sorted unique ``indices`` (int64) with their ``values`` (float64)."""

    indices: np.ndarray
    values: np.ndarray

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def to_json(self) -> str:
        """Compact JSON ``{"i": [...], "v": [...]}`` (values rounded to 6 digits), for the log."""
        return json.dumps(
            {"i": self.indices.tolist(), "v": [round(v, 6) for v in self.values.tolist()]}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> Features:
        data = json.loads(text)
        return cls(np.asarray(data["i"], dtype=np.int64), np.asarray(data["v"], dtype=np.float64))

    def dense(self, size: int) -> np.ndarray:
        """The vector as a dense array of ``size`` entries."""
        out = np.zeros(size)
        out[self.indices] = self.values
        return out


def message_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text content of chat messages (string contents and the text parts of list contents), joined by newlines."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def _stable_hash(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class Featurizer:
    """Computes :class:`Features` from messages; configured by ``bits`` (hashed slots = 2**bits) and ``max_chars``."""

    VERSION = 1  # bump when the computation changes: logged features of another version are not reused

    def __init__(self, bits: int = 12, max_chars: int = 4096) -> None:
        if not 4 <= bits <= 24:
            raise ValueError(f"feature bits must be in [4, 24], got {bits}")
        if max_chars < 16:
            raise ValueError(f"max_chars must be >= 16, got {max_chars}")
        self.bits = int(bits)
        self.max_chars = int(max_chars)
        self.hashed = 1 << self.bits
        self.size = self.hashed + len(DENSE_NAMES)
        # powers of P and of its inverse modulo 2**64, for position-free word hashes from prefix sums
        n = 4 * self.max_chars  # UTF-8 takes at most 4 bytes per character
        inverse = pow(int(_P), -1, 1 << 64)
        self._pow = np.cumprod(np.r_[np.uint64(1), np.full(n + 1, _P, dtype=np.uint64)], dtype=np.uint64)
        self._inv1 = np.cumprod(np.full(n + 2, np.uint64(inverse), dtype=np.uint64), dtype=np.uint64)  # P**-(k+1)
        self._shift = np.uint64(64 - self.bits - 1)  # the top bits + 1 of a mixed hash: slot, then sign
        self._dense_slots = np.arange(self.hashed, self.size, dtype=np.int64)
        self._log_scale = math.log1p(4 * self.max_chars)

    @property
    def space(self) -> str:
        """A label of this feature space: logged features are reused only within the same space."""
        return f"v{self.VERSION}-b{self.bits}-c{self.max_chars}"

    def __repr__(self) -> str:
        return f"Featurizer(bits={self.bits}, max_chars={self.max_chars})"

    def __call__(
        self, messages: Sequence[Mapping[str, Any]] | str, extra: Mapping[str, float] | None = None
    ) -> Features:
        """Features of a call's messages (or of a text), plus the caller's ``extra`` named values."""
        text = messages if isinstance(messages, str) else message_text(messages)
        return self.from_text(text, extra)

    def from_text(self, text: str, extra: Mapping[str, float] | None = None) -> Features:
        """Features of one text (its last ``max_chars`` characters)."""
        raw = text[-self.max_chars :].encode("utf-8", "replace")
        slots, values, words = self._ngrams(raw)
        norm = math.sqrt(float(values @ values))
        if norm > 0:
            values /= norm
        if extra:  # the caller's values are added as they are, after the n-grams' scaling
            mine = {int(i): float(v) for i, v in zip(slots, values, strict=True)}
            for name, value in _checked(extra).items():
                h = _stable_hash(name)
                slot = h & (self.hashed - 1)
                mine[slot] = mine.get(slot, 0.0) + (value if h >> 31 else -value)
            slots = np.array(sorted(k for k, v in mine.items() if v != 0.0), dtype=np.int64)
            values = np.array([mine[k] for k in slots.tolist()])
        indices = np.concatenate([slots, self._dense_slots])
        return Features(indices, np.concatenate([values, self._dense(raw, words)]))

    def _ngrams(self, raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
        """Sorted unique slots of the word uni- and bi-grams with their signed counts, and the number of words."""
        codes = np.frombuffer(b"\0" + raw.translate(_LOWER) + b"\0", dtype=np.uint8)
        inside = codes.astype(np.bool_)
        edges = np.flatnonzero(inside[1:] != inside[:-1])  # word i spans padded positions (edges[2i], edges[2i+1]]
        if not len(edges):
            return np.empty(0, dtype=np.int64), np.empty(0), 0
        prefix = (codes * self._pow[: len(codes)]).cumsum()
        before, last = edges[0::2], edges[1::2]
        words = (prefix[last] - prefix[before]) * self._inv1[before] * _MIX
        grams = np.concatenate([words, (words[:-1] * _BIGRAM + words[1:]) * _MIX])
        counts = np.bincount((grams >> self._shift).astype(np.intp), minlength=2 * self.hashed)  # (slot, sign) pairs
        signed = np.flatnonzero(counts)
        slots = signed >> 1
        values = counts[signed] * (1.0 - 2.0 * (signed & 1))
        both = np.flatnonzero(slots[1:] == slots[:-1])  # slots hit with both signs are adjacent: merge them
        if len(both):
            values[both + 1] += values[both]
            keep = np.ones(len(slots), dtype=np.bool_)
            keep[both] = False
            keep &= values != 0.0
            slots, values = slots[keep], values[keep]
        return slots, values, len(words)

    def _dense(self, raw: bytes, words: int) -> np.ndarray:
        """Bias, log lengths, character-class shares and marker counts (each roughly in [0, 1])."""
        n = max(len(raw), 1)
        by_class = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256) @ _CLASS_OF
        code = 4 * raw.count(b"```") + by_class[5] / 4.0
        math_ = 4 * raw.count(b"\\frac") + by_class[6] / 4.0
        scale = self._log_scale
        out = np.empty(len(DENSE_NAMES))
        out[0] = 1.0
        out[1] = math.log1p(len(raw)) / scale
        out[2] = math.log1p(words) / scale
        out[3] = math.log1p(raw.count(b"\n")) / scale
        out[4:9] = by_class[:5] / n
        out[9] = math.log1p(code) / 4.0
        out[10] = math.log1p(math_) / 4.0
        return out


def _checked(extra: Mapping[str, float]) -> dict[str, float]:
    """Caller features as finite floats by non-empty string name; anything else raises InvalidRequest."""
    if not isinstance(extra, Mapping):
        raise InvalidRequest(f"features must be a mapping of name to number, got {type(extra).__name__}")
    out: dict[str, float] = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"feature names must be non-empty strings, got {name!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
        ):
            raise InvalidRequest(f"feature {name!r} must be a finite number, got {value!r}")
        out[name] = float(value)
    return out
