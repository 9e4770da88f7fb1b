"""Our caption scores are pycocoevalcap's, on a case whose values are known."""

from __future__ import annotations

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from cnnapps.apps.caption.evaluate import caption_scores

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
