"""Vocabulary, greedy and beam search on a tiny hand-made decoder whose best sequence is known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cnnapps.apps.caption.decode import beam_search, greedy
from cnnapps.apps.caption.vocab import Vocabulary, ptb_tokens, tokenize


def test_vocabulary_build_encode_decode():
    vocab = Vocabulary.build(["A red circle.", "a red square", "a blue square", "rare"], min_count=2)
    assert vocab.tokens == ("<pad>", "<start>", "<end>", "<unk>", "a", "red", "square")
    ids = vocab.encode("A red, red triangle!")
    assert ids == [1, 4, 5, 5, 3, 2]
    assert vocab.decode(ids[1:]) == ["a", "red", "red"]  # <unk> dropped, stops at <end>
    assert vocab.encode("a red square", max_len=2) == [1, 4, 5, 2]
    assert tokenize("It's a Red-circle.") == ["it's", "a", "red-circle"]
    with pytest.raises(ValueError):
        Vocabulary(("a", "b"))


def test_tokenize_keeps_the_words_ptb_keeps():
    # hyphenated words, decimals, grouped digits and initialisms are one word each, as PTB tokenisation has them
    assert tokenize("A man in a T-shirt riding a skate-board.") == ["a", "man", "in", "a", "t-shirt", "riding", "a",
                                                                   "skate-board"]  # fmt: skip
    assert tokenize("A 3.5-inch disk, 2.0 and 10,000 people at 3:30 -- in the U.S.") == [
        "a", "3.5-inch", "disk", "2.0", "and", "10,000", "people", "at", "3:30", "in", "the", "u.s."]  # fmt: skip
    assert tokenize("x--y, t-shirt-, 3. and/or mr. smith on main st.") == ["x", "y", "t-shirt", "3", "and/or", "mr.",
                                                                           "smith", "on", "main", "st."]  # fmt: skip
    # a contraction is one word of the vocabulary; scoring splits it as PTB does
    assert tokenize("The man's dog isn't o'neil's. Dogs' 5'11") == ["the", "man's", "dog", "isn't", "o'neil's",
                                                                    "dogs", "5", "11"]  # fmt: skip
    assert ptb_tokens("The man's dog isn't o'neil's; they can't, he'd've, cannot, o'clock") == [
        "the", "man", "'s", "dog", "is", "n't", "o'neil", "'s", "they", "ca", "n't", "he", "'d", "'ve", "can", "not",
        "o'clock"]  # fmt: skip
    assert ptb_tokens("his cat's-eye") == ["his", "cat", "'s", "eye"]
    assert tokenize("the man\u2019s hat") == ["the", "man's", "hat"]
    # a single letter closing the caption loses its full stop, as PTB splits it off
    assert tokenize("A bottle of vitamin C.") == ["a", "bottle", "of", "vitamin", "c"]
    assert tokenize("Grade B. ") == ["grade", "b"] and tokenize("Me and I.") == ["me", "and", "i"]
    assert tokenize('A sign saying "vitamin C."') == ["a", "sign", "saying", "vitamin", "c."]  # PTB keeps it there
    assert tokenize("(Plan B.) A dog") == ["plan", "b.", "a", "dog"]  # not the caption's end


def test_vocabulary_says_hyphenated_words_whole():
    vocab = Vocabulary.build(["A man in a t-shirt.", "A 2-story house"])
    assert {"t-shirt", "2-story"} <= set(vocab.tokens) and "shirt" not in vocab.tokens
    caption = " ".join(vocab.decode(vocab.encode("a man in a T-shirt")[1:]))  # the predictor's caption: words joined
    assert caption == "a man in a t-shirt"
    # a vocabulary of an older model file (hyphens split, contractions whole) keeps encoding and decoding
    old = Vocabulary(("<pad>", "<start>", "<end>", "<unk>", "a", "t", "shirt", "man's"))
    assert " ".join(old.decode(old.encode("a man's shirt")[1:])) == "a man's shirt"
    assert ptb_tokens("a t shirt") == ["a", "t", "shirt"]


VOCAB = Vocabulary(("<pad>", "<start>", "<end>", "<unk>", "x", "y"))
X, Y, END = 4, 5, 2
# next-word probabilities given the words so far (missing entries are ~0)
TABLE = {
    (): {X: 0.55, Y: 0.45},
    (X,): {END: 0.35, X: 0.33, Y: 0.32},
    (Y,): {Y: 0.9, END: 0.1},
    (X, X): {END: 1.0},
    (X, Y): {END: 1.0},
    (Y, Y): {END: 1.0},
}


class TableDecoder(torch.nn.Module):
    """A decoder whose next-word distribution is looked up from the words so far (in ``table``); ``rows`` records
    how many hypotheses each step extends."""

    def __init__(self, table=None):
        super().__init__()
        self.table, self.rows = table or TABLE, []

    def init_state(self, features):
        return (torch.zeros(features.shape[0], 0, dtype=torch.long),)

    def step(self, state, tokens):
        (seen,) = state
        seen = torch.cat([seen, tokens[:, None]], 1)
        self.rows.append(len(seen))
        logits = torch.full((len(seen), len(VOCAB)), -30.0)
        for row, seq in enumerate(seen.tolist()):
            for word, p in self.table.get(tuple(w for w in seq if w != VOCAB.start), {END: 1.0}).items():
                logits[row, word] = math.log(p)
        return logits, (seen,), torch.full((len(seen), 4), 0.25)


def _best_by_enumeration(max_len):
    best, best_score = None, -math.inf
    for n in range(max_len + 1):
        for words in itertools.product((X, Y), repeat=n):
            score, prefix = 0.0, ()
            for w in (*words, END):
                probs = TABLE.get(prefix, {END: 1.0})
                if w not in probs:
                    score = -math.inf
                    break
                score += math.log(probs[w])
                prefix = (*prefix, w)
            if score > best_score:
                best, best_score = list(words), score
    return best, best_score


def test_beam_search_returns_the_best_scoring_sequence_greedy_misses():
    features = torch.zeros(1, 4, 8)
    (g,) = greedy(TableDecoder(), features, VOCAB, max_len=3)
    assert g.tokens == [X] and g.score == pytest.approx(math.log(0.55 * 0.35))
    expected, expected_score = _best_by_enumeration(3)
    assert expected == [Y, Y]  # 0.45 * 0.9 beats 0.55 * 0.35
    b = beam_search(TableDecoder(), features, VOCAB, beam=3, max_len=3)
    assert b.tokens == expected and b.score == pytest.approx(expected_score, abs=1e-5)
    assert len(b.attention) == 2


def test_length_limit_forces_the_end():
    h = beam_search(TableDecoder(), torch.zeros(1, 4, 8), VOCAB, beam=2, max_len=1)
    assert len(h.tokens) == 1 and h.tokens == [X]  # "y" alone must end at 0.1; "x" ends at 0.35


# ``x`` ends (0.33) in the second step, below ``y y`` (0.405): ``x x`` (0.1375) must take its place in the beam
REPLACED = {
    (): {X: 0.55, Y: 0.45},
    (X,): {END: 0.6, X: 0.25, Y: 0.15},
    (Y,): {Y: 0.9, END: 0.1},
    (Y, Y): {Y: 0.95, END: 0.05},
}


def test_beam_search_keeps_beam_hypotheses_open_when_one_finishes():
    decoder = TableDecoder(REPLACED)
    h = beam_search(decoder, torch.zeros(1, 4, 8), VOCAB, beam=2, max_len=3)
    assert decoder.rows == [1, 2, 2, 2]  # never fewer than 2 open after the first step
    assert h.tokens == [Y, Y, Y] and h.score == pytest.approx(math.log(0.45 * 0.9 * 0.95), abs=1e-5)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_beam_one_is_greedy_and_a_batch_is_captioned_as_one_by_one(decoder):
    from cnnapps.apps.caption.model import AttentionLSTMDecoder, TransformerCaptionDecoder
    from cnnapps.apps.caption.predictor import caption_grid

    torch.manual_seed(0)
    for _ in range(5):
        net = (AttentionLSTMDecoder(len(VOCAB), 8, 8, 8, 8, dropout=0.0) if decoder == "lstm"
               else TransformerCaptionDecoder(len(VOCAB), 8, 4, d_model=8, heads=2, layers=1, max_len=4))  # fmt: skip
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(3.0)  # sharp distributions
        net.eval()
        features = torch.randn(3, 4, 8)
        for i, g in enumerate(greedy(net, features, VOCAB, 4)):
            b = beam_search(net, features[i : i + 1], VOCAB, beam=1, max_len=4)
            assert b.tokens == g.tokens and b.score == pytest.approx(g.score, abs=1e-5)
        model = type("Model", (), {"decoder": net, "vocab": VOCAB, "spec": type("Spec", (), {"grid": 2})})()
        together = caption_grid(model, features, 3, 4)
        alone = [caption_grid(model, features[i : i + 1], 3, 4)[0] for i in range(3)]
        assert [(r.words, r.score) for r in together] == [(r.words, r.score) for r in alone]


def test_beam_search_refuses_a_search_without_hypotheses():
    for beam, max_len in ((0, 3), (2, -1)):
        message = f"needs beam >= 1 and max_len >= 0, not beam {beam} and max_len {max_len}"
        with pytest.raises(ValueError, match=message):
            beam_search(TableDecoder(), torch.zeros(1, 4, 8), VOCAB, beam=beam, max_len=max_len)
