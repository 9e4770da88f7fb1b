"""The words a captioner knows: built from training captions, stored inside the model file."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
# a word: letters and digits, joined inside by - . / (t-shirt, 3.5, and/or), by ' before a letter (o'clock, man's)
# and, between digits, by , and : (10,000, 3:30), as PTB tokenisation keeps them
_WORD = re.compile(r"[^\W_]+(?:(?:[-./]|'(?=[^\W\d_]))[^\W_]+|(?<=\d)[,:]\d+)*")
# words PTB writes with their full stop: single letters and initialisms (u.s., p.m.), these, and no. before a number
_INITIALS = re.compile(r"[^\W\d_](?:\.[^\W\d_])*")
_NUMBER_NEXT = re.compile(r"\.\s*\d")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "etc", "vs", "inc", "co", "ave", "mt", "ft",
                            "jan", "feb", "aug", "sep", "sept", "oct", "nov", "dec"})  # fmt: skip
# PTB's contractions, split off the word in front: man's -> man 's, don't -> do n't, he'd've -> he 'd 've
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ll|d|ve|m))(?![^\W_])-?")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "gimme": ("gim", "me"), "lemme": ("lem", "me")}  # fmt: skip


def tokenize(caption: str) -> list[str]:
    """The caption's words, lower-cased, punctuation around them dropped: what a vocabulary holds and a captioner says.

    Words are PTB tokenisation's (``t-shirt``, ``3.5``, ``u.s.``), except that a contraction stays whole
    (``man's``, ``don't``); :func:`ptb_tokens` splits those the way PTB does."""
    text = caption.lower().replace("\u2019", "'")  # a typographic apostrophe is one too, as PTB reads it
    words = []
    for match in _WORD.finditer(text):
        word = match.group()
        last = not text[match.end() + 1 :].strip(" \t\n\"')]}")  # the caption's closing full stop
        if text.startswith(".", match.end()) and (
            word in _ABBREVIATIONS
            or (_INITIALS.fullmatch(word) and not (last and len(word) == 1))  # "vitamin c." ends the caption
            or (word == "no" and _NUMBER_NEXT.match(text, match.end()))
        ):
            word += "."
        words.append(word)
    return words


def ptb_tokens(caption: str) -> list[str]:
    """The tokens pycocoevalcap's PTB tokenizer gives on plain captions (the words of :func:`tokenize`, with
    ``man's`` as ``man 's``, ``don't`` as ``do n't`` and ``cannot`` as ``can not``), so that scores computed
    without Java match those with it. Symbols such as ``$ % &`` are dropped here; PTB keeps them."""
    tokens = []
    for word in tokenize(caption):
        for piece in _CLITIC.split(word):
            if piece:
                tokens.extend(_SPLIT_WORDS.get(piece, (piece,)))
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Token list with the special tokens first: ``<pad>`` = 0, ``<start>``, ``<end>``, ``<unk>``."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls((*SPECIALS, *words))

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {', '.join(SPECIALS)}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad(self) -> int:
        return 0

    @property
    def start(self) -> int:
        return 1

    @property
    def end(self) -> int:
        return 2

    @property
    def unk(self) -> int:
        return 3

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """``<start> words... <end>`` as ids; unknown words become ``<unk>``; at most ``max_len`` words."""
        words = tokenize(caption)[:max_len]
        return [self.start, *(self._index.get(w, self.unk) for w in words), self.end]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words up to the first ``<end>``, special tokens dropped."""
        words = []
        for i in ids:
            if i == self.end:
                break
            if i >= len(SPECIALS):
                words.append(self.tokens[i])
        return words
