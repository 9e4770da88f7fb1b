"""Our caption scores are pycocoevalcap's, on a case whose values are known."""

from __future__ import annotations

import shutil
import sys

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from cnnapps.apps.caption.evaluate import _tokenized, caption_scores
from cnnapps.apps.caption.vocab import Vocabulary

REFS = {
    1: ["a red circle above a blue square", "a blue square below a red circle"],
    2: ["a green triangle on its own", "a single green triangle"],
    3: ["a blue circle left of a red square", "a red square right of a blue circle"],
}


def test_exact_captions_score_one():
    scores = caption_scores(REFS, {k: v[0] for k, v in REFS.items()}, ptb=False)
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)


def test_scores_equal_pycocoevalcap_directly():
    candidates = {1: "a red circle above a blue circle", 2: "a green square on its own", 3: "a blue circle"}
    ours = caption_scores(REFS, candidates, ptb=False)
    gts = {k: list(v) for k, v in REFS.items()}
    res = {k: [v] for k, v in candidates.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert [ours[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert ours["cider"] == pytest.approx(cider)
    # candidate 1: 6 of 7 unigrams match; 3 is short: BLEU's brevity penalty lowers every order
    assert 0.0 < ours["bleu4"] < ours["bleu1"] < 1.0


# references whose words PTB tokenisation keeps whole (t-shirt, 3.5, u.s.) or splits (man's, isn't)
TRICKY = {
    1: ["A man in a t-shirt riding a skate-board.", "A man wearing a T-shirt on a skateboard"],
    2: ["A 2-story house with a car parked in front.", "A two-story building near a parked car"],
    3: ["A 3.5-inch disk on a desk in the U.S.", "The man's dog isn't on the 10,000-foot peak."],
}


def _said(references: dict[int, list[str]]) -> dict[int, str]:
    """The first reference as a captioner trained on these captions says it: vocabulary words joined by spaces."""
    vocab = Vocabulary.build(c for v in references.values() for c in v)
    return {k: " ".join(vocab.decode(vocab.encode(v[0])[1:])) for k, v in references.items()}


def test_caption_equal_to_a_reference_scores_one_in_training_validation():
    said = _said(TRICKY)
    assert said[1] == "a man in a t-shirt riding a skate-board"
    scores = caption_scores(TRICKY, said, ptb=False)  # what in-training validation computes
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenisation needs Java")
def test_java_says_nothing_on_stderr(capfd):
    # "PTBTokenizer tokenized 143 tokens at ..." twice on every eval caption: Java's stderr is the process's own
    said = _said(TRICKY)
    assert caption_scores(TRICKY, said, ptb=True)["bleu4"] == pytest.approx(1.0, abs=1e-6)
    print("after", file=sys.stderr)  # the stderr it had is back
    assert capfd.readouterr().err == "after\n"


@pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenisation needs Java")
def test_training_validation_scores_equal_ptb_scores():
    said = _said(TRICKY)
    with_ptb, without = caption_scores(TRICKY, said, ptb=True), caption_scores(TRICKY, said, ptb=False)
    for n in range(1, 5):
        assert with_ptb[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert with_ptb == pytest.approx(without)
    # the same tokens on every caption, references and candidates alike
    captions = {k: [*v, said[k]] for k, v in TRICKY.items()}
    assert _tokenized(captions, True) == _tokenized(captions, False)
    # and on a caption scored against other references: the scores agree, not only at 1.0
    other = {1: "a man in a t-shirt on a skate-board", 2: "a 2-story building", 3: "the man's dog isn't on a desk"}
    assert caption_scores(TRICKY, other, ptb=True) == pytest.approx(caption_scores(TRICKY, other, ptb=False))
