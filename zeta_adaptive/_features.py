"""Prompt features for per-prompt routing: a sparse, hashed vector computed cheaply from a call's messages.

A :class:`Featurizer` turns messages into :class:`Features` (sorted unique indices and float values)
in a space of ``2**bits`` hashed slots plus a few dense slots:

* hashed word uni- and bi-grams (lower-cased ASCII alphanumeric runs; other bytes separate words,
  bytes >= 128 belong to words), each one present weighing 1 whatever its count, the block scaled to
  unit L2 norm (presence, not counts: on RouteLLM's MMLU it routes better, APGR +0.011 offline with
  the same classifier and +0.003 online with ``probit_thompson``);
* a bias slot (always 1), log-scaled lengths (characters, words, lines), character-class shares
  (digits, upper case, punctuation, whitespace, non-ASCII) and code and math marker counts;
* caller features (``{"name": value}``), hashed by name into the same hashed block.

The hash is a polynomial hash of a word's bytes modulo 2**64 followed by a multiplicative mix
(a bigram's: the first word's hash times an odd constant plus the second's), all in numpy: it is the same in every process and on every platform (no Python ``hash()``
randomisation), and is vectorised (about 20 numpy operations per prompt, whatever its length). Only the text's last
``max_chars`` characters are scanned (the end of a chat is its latest turn). Only indices and
values are ever logged, never the text.
"""

from __future__ import annotations

import json
import math
import sys
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
_NO_SLOTS = np.empty(0, dtype=np.int64)
_NO_SLOTS.flags.writeable = False

# byte -> lower-cased byte for word bytes, 0 for separators (bytes >= 128 are word bytes: UTF-8 text)
_LOWER = bytes((ord(chr(c).lower()) if chr(c).isalnum() else 0) if c < 128 else c for c in range(256))
_CLASSES = ("digit", "upper", "punct", "space", "non_ascii")
_CODE_CHARS = "{};<>[]"
_MATH_CHARS = "=+-*/^$%<>"
# byte -> what it adds to each of: the five classes, the code and math markers (a brace-like or an
# operator character a quarter, a backtick 4/3 so that a ``` fence adds 4, a backslash as in \frac 4), line ends
_CLASS_OF = np.array(
    [
        [
            chr(c).isdigit() and c < 128,
            chr(c).isupper() and c < 128,
            c < 128 and not chr(c).isalnum() and not chr(c).isspace(),
            chr(c).isspace() and c < 128,
            c >= 128,
            (chr(c) in _CODE_CHARS) / 4 + (c == ord("`")) * 4 / 3,
            (chr(c) in _MATH_CHARS) / 4 + (c == ord("\\")) * 4,
            c == 10,
        ]
        for c in range(256)
    ],
    dtype=np.float64,
)
_BYTE_CLASSES = np.ascontiguousarray(_CLASS_OF.T)  # a text's class counts: this times its byte counts
# where a uint64's high 32 bits are in its view as two uint32
_HIGH = 1 if sys.byteorder == "little" else 0

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

    VERSION = 3  # bump when the computation changes: logged features of another version are not reused

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
        # P**-(k+1) times the mix: a word's hash from the prefix sums at its edges in two multiplications
        self._inv_mix = np.cumprod(np.full(n + 2, np.uint64(inverse), dtype=np.uint64), dtype=np.uint64) * _MIX
        self._shift = np.uint32(32 - self.bits)  # a mixed hash's top bits are its slot
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
        slots, words = self._ngrams(raw)
        dense = self._dense(raw, words)
        k = len(slots)
        indices = np.empty(k + len(dense), dtype=np.int64)  # filled in place: no concatenation's conversions
        values = np.empty(k + len(dense))
        indices[:k] = slots
        indices[k:] = self._dense_slots
        values[:k] = 1.0 / math.sqrt(k) if k else 0.0  # each present n-gram, scaled to unit L2 norm
        values[k:] = dense
        if extra:  # the caller's values are added as they are, after the n-grams' scaling
            mine = {int(i): float(v) for i, v in zip(slots.tolist(), values[:k].tolist(), strict=True)}
            for name, value in _checked(extra).items():
                h = _stable_hash(name)
                slot = h & (self.hashed - 1)
                mine[slot] = mine.get(slot, 0.0) + (value if h >> 31 else -value)
            hashed = np.array(sorted(k for k, v in mine.items() if v != 0.0), dtype=np.int64)
            indices = np.concatenate((hashed, self._dense_slots))
            values = np.concatenate(([mine[k] for k in hashed.tolist()], dense))
        return Features(indices, values)

    def _ngrams(self, raw: bytes) -> tuple[np.ndarray, int]:
        """Sorted unique slots of the word uni- and bi-grams (uint32) and the number of words.

        About twenty numpy calls whatever the text's length: words from the edges of the
        word-byte runs, their hashes from one prefix sum, their slots (the hashes' top bits, as
        uint32: half the sort of uint64) kept once each from the runs of equal slots once sorted (so the
        cost does not grow with the number of slots).
        """
        codes = np.frombuffer(b"\0" + raw.translate(_LOWER) + b"\0", dtype=np.uint8)
        inside = codes.astype(np.bool_)
        edges = (inside[1:] != inside[:-1]).nonzero()[0]  # word i spans padded positions (edges[2i], edges[2i+1]]
        n = len(edges) // 2
        if not n:
            return _NO_SLOTS, 0
        at = (codes * self._pow[: len(codes)]).cumsum().take(edges)
        grams = np.empty(2 * n - 1, dtype=np.uint64)  # words, then bigrams: their hashes
        words, bigrams = grams[:n], grams[n:]
        np.subtract(at[1::2], at[0::2], out=words)
        words *= self._inv_mix.take(edges)[0::2]  # a contiguous index: take copies a strided one first
        np.multiply(words[:-1], _BIGRAM, out=bigrams)
        bigrams += words[1:]  # its top bits are mixed: those of words[:-1] times an odd constant
        top = np.right_shift(grams.view(np.uint32)[_HIGH::2], self._shift)  # each hash's top bits: its slot
        top.sort()
        first = np.empty(len(top), dtype=np.bool_)  # where each run of equal slots starts
        first[0] = True
        np.not_equal(top[1:], top[:-1], out=first[1:])
        return top[first], n

    def _dense(self, raw: bytes, words: int) -> list[float]:
        """Bias, log lengths, character-class shares and marker counts (each roughly in [0, 1])."""
        counts = _BYTE_CLASSES.dot(np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256))
        digit, upper, punct, space, non_ascii, code, math_, lines = counts.tolist()
        share = 1.0 / max(len(raw), 1)
        scale = 1.0 / self._log_scale
        log1p = math.log1p
        return [
            1.0,
            log1p(len(raw)) * scale,
            log1p(words) * scale,
            log1p(lines) * scale,
            digit * share,
            upper * share,
            punct * share,
            space * share,
            non_ascii * share,
            log1p(code) / 4.0,
            log1p(math_) / 4.0,
        ]


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
