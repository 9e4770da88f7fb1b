"""The words a captioner knows: built from training captions, stored inside the model file."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_L, _A = r"[^\W\d_]", r"[^\W_]"  # a letter; a letter or digit
# a part of a word: a number (3.5, 10,000, 3:30, .5; letters after it are a word of their own: 3.5 mm), letters
# joined by full stops (u.s, file.txt; with the stop before a hyphen: u.s.-made), or letters and digits with
# o'/d'/l' before (o'clock), ' between vowels (ma'am) and contractions after (man's, don't, he'd've)
_PART = (
    rf"\d*(?:[.,:]\d+)+|{_L}+(?:\.{_L}+)+(?:\.(?=[-_\u2010\u2011]{_A}))?"
    rf"|(?:[dlo]'(?={_L}))?{_A}+(?:(?<=[aeiouy])'(?=[aeiou]){_A}+)*(?:(?:(?<=n)'t|'(?:s|re|ll|d|ve|m))(?!{_A}))*"
)
# PTB's tokens, in order of precedence: 3 1/2 (one token), a@b.com, urls, no. before a number, c'mon and the like,
# US$ and A&W (capitals only), y'all and 'tis (whole, as contractions), quote-led words ('90s, 'n', 'em, '11 before a
# space, a lone 's or n't), words (parts joined by - _ / and a sign
# before a number: -5, t-shirt, and/or), then symbols: runs of ?! (?!), of * # @ _ and of 5 or more -, else one
# character (the punctuation PTB's scorer drops among them: . , ; : ? ! ' " - and quotes, dashes, ellipses)
_TOKEN = re.compile(
    rf"(?<!\d)\d{{1,4}}[ \xa0]\d{{1,4}}/\d{{1,4}}(?!\d)|{_A}[\w.+-]*@(?:[\w-]+\.)+{_L}{{2,4}}(?!{_A})"
    r"|https?://[^\s\"<>|()]*[^\s\"<>|.!?(){},-]|(?:nos?|prop|figs?|op|pp)\.(?=\s*\d)"
    rf"|(?:c'mon|s'mores|li'l|nat'l|dunkin')(?!{_A})|(?-i:[A-Z]+\$|[A-Z]+(?:&[A-Z]+)+)|y'{_L}+"
    rf"|'(?:[2-9]0s|em|cause|till?)(?!{_A})|'n(?:'|(?!{_A}))|'t(?:is|was)(?!{_A})|'\d\d(?=\s)"
    rf"|(?:(?<!')'(?:s|re|ll|d|ve|m)|n't)(?!{_A})"
    rf"|(?:(?<![-+])[-+](?=\.?\d))?(?:{_PART})(?:[-_/\u2010\u2011](?:{_PART}))*"
    r"|[?!]{2,}|-{5,}|[*#@_]+|[^\w\s]",
    re.IGNORECASE,
)
_DROPPED = set(
    ".,;:?!'\"`-\u2010\u2011\u2013\u2014\u2015\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2026\u2039\u203a\u00ab\u00bb"
)
# words PTB writes with their full stop: single letters and initialisms (u.s., p.m., non-u.s.) and these (some only
# capitalised: Miss. but miss); no. (nos. fig. op. pp. prop.) only before a number, as _TOKEN has it
_INITIALS = re.compile(r"(?:.*-)?([^\W\d_](?:\.[^\W\d_])*)")
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm
    rev maj sgt cpl pvt mt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det jr sr bros blvd rd esq
    ph.d ed.d inc co cos corp pty ltd plc bancorp dept bhd assn univ intl sys invt elec natl mfg mtg ph tel est ext sq
    ft vs alex wm jos cie cf treas etc al seq jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu
    thurs fri ala ariz calif colo conn dak fla ga ind kan kans ky md mich minn mo mont neb nev okla penn tenn va vt
    wis wisc wyo""".split()  # noqa: SIM905
)
_CAPITALISED = frozenset(("miss", "ark", "del", "ill", "la", "mass", "ore", "pa", "tex", "wash"))
# a single letter's full stop is split off before one of these, capitalised (vitamin C. The ...), and at the caption's
# end, as when the next caption in PTB's file starts with one ("A dog ..."): PTB reads that as a sentence's end
_STARTS = frozenset(
    """about according additionally after an a as at but earlier he her here however if in it last
    many more mr. ms. now once one other our she since so some such that the then there these they this we when while
    what yet you""".split()  # noqa: SIM905
)
_NEXT_WORD = re.compile(r"\.\s+([^\W\d_]+\.?)(?!\S)")
# PTB's contractions, split off the word in front: man's -> man 's, don't -> do n't, he'd've -> he 'd 've
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ll|d|ve|m))(?![^\W_])-?")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "gimme": ("gim", "me"), "lemme": ("lem", "me"), "'tis": ("'t", "is"),
                "'twas": ("'t", "was")}  # fmt: skip
# brackets and currency signs as PTB writes them
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_SYMBOLS = {**_BRACKETS, "\u20ac": "$", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u00a3": "#",
                "\u00a2": "cents"}  # fmt: skip


def _keeps_stop(text: str, word: str, end: int) -> bool:
    """Whether PTB keeps the full stop after ``word`` (which ends at ``end`` in ``text``) as part of it."""
    key = word.lower()
    if key in _ABBREVIATIONS or (key in _CAPITALISED and word[0].isupper()):
        return True
    initials = _INITIALS.fullmatch(word)
    if not initials or (len(initials[1]) == 1 and initials[1] != word):  # x-b.: PTB splits the stop off
        return False
    if len(word) > 1:
        return True
    if not text[end + 1 :].strip(" \t\n"):  # the caption's closing full stop (not one inside quotes: "vitamin c.")
        return False
    after = _NEXT_WORD.match(text, end)
    return not (after and after.group(1)[0].isupper() and after.group(1).lower() in _STARTS)


def _words(caption: str) -> list[str]:
    """PTB's tokens of the caption, lower-cased, punctuation dropped, contractions whole, brackets as written."""
    text = caption.replace("\u2019", "'")  # a typographic apostrophe is one too, as PTB reads it
    words = []
    for match in _TOKEN.finditer(text):
        word = match.group()
        if word in _DROPPED:
            continue
        if text.startswith(".", match.end()) and _keeps_stop(text, word, match.end()):
            word += "."
        words.append(word.replace(" ", "\xa0").lower())
    return words


def tokenize(caption: str) -> list[str]:
    """The caption's words, lower-cased, punctuation and brackets dropped: what a vocabulary holds and a captioner
    says.

    Words are PTB tokenisation's (``t-shirt``, ``3.5``, ``u.s.``, ``ph.d.``, ``$``, ``&``), except that a contraction
    stays whole (``man's``, ``don't``); :func:`ptb_tokens` splits those the way PTB does."""
    return [w for w in _words(caption) if w not in _BRACKETS]


def ptb_tokens(caption: str) -> list[str]:
    """The tokens pycocoevalcap's PTB tokenizer gives on plain captions, so that scores computed without Java match
    those with it: the words of :func:`tokenize`, with ``man's`` as ``man 's``, ``don't`` as ``do n't`` and
    ``cannot`` as ``can not``, and brackets as PTB writes them (``(`` as ``-lrb-``), which its scorer keeps."""
    tokens = []
    for word in _words(caption):
        for piece in _CLITIC.split(word):
            if piece.startswith("y'") and len(piece) > 2:  # y'all -> y' all
                tokens += ["y'", piece[2:]]
            elif piece:
                tokens.extend(_SPLIT_WORDS.get(piece, (_PTB_SYMBOLS.get(piece, piece),)))
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
