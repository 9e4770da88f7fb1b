"""Caption metrics by pycocoevalcap: BLEU-1..4 and CIDEr (and METEOR when Java is present).

Captions are tokenised with pycocoevalcap's PTB tokenizer when Java is available (as its reference
evaluation does), else with :func:`~cnnapps.apps.caption.vocab.ptb_tokens`, which gives PTB's tokens on plain
captions (hyphenated words, decimals and initialisms whole, contractions split; symbols such as ``$ % &``, which
PTB keeps, dropped). In-training validation always uses the latter. A vocabulary's words are those tokens with
contractions whole (``t-shirt``, ``3.5``, ``man's``), so a captioner can say a reference word for word and score
the same with either tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

from cnnapps.apps.caption.vocab import ptb_tokens


def java_available() -> bool:
    return shutil.which("java") is not None


def _tokenized(captions: dict[Any, list[str]], ptb: bool) -> dict[Any, list[str]]:
    if ptb:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(io.StringIO()), _stderr_to_null():
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [" ".join(ptb_tokens(c)) for c in v] for k, v in captions.items()}


@contextlib.contextmanager
def _stderr_to_null() -> Iterator[None]:
    """File descriptor 2 to /dev/null: Java's PTB tokenizer, a process of its own, says "PTBTokenizer tokenized 143
    tokens at ..." on the stderr it inherits, which ``redirect_stderr`` does not reach."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


#: the names people read: the same as the README and the training docs (BLEU-1..4, CIDEr)
SCORE_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "cider": "CIDEr",
               "meteor": "METEOR"}  # fmt: skip


def caption_scores(
    references: dict[Any, list[str]], candidates: dict[Any, str], meteor: bool = False, ptb: bool | None = None
) -> dict[str, float]:
    """Corpus scores of one candidate per image against its references (the same image keys)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ptb = java_available() if ptb is None else ptb
    keys = [k for k in candidates if k in references]
    gts = _tokenized({k: references[k] for k in keys}, ptb)
    res = _tokenized({k: [candidates[k]] for k in keys}, ptb)
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["cider"] = float(cider)
    if meteor and java_available():
        from pycocoevalcap.meteor.meteor import Meteor

        with contextlib.redirect_stdout(io.StringIO()):
            scores["meteor"] = float(Meteor().compute_score(gts, res)[0])
    return scores


def evaluate_captioner(
    predictor: Any, items: list[Any], meteor: bool = True, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Caption every image of ``items`` (:class:`~cnnapps.datasets.captions.CaptionedImage`) and score them.

    Returns the report (scores, counts, tokenizer, unreadable images) and the COCO results list."""
    results = predictor.predict([item.path for item in items], progress=progress)
    failed = [{"path": r.source, "error": r.error} for r in results if not r.ok]
    candidates = {item.image_id: r.caption for item, r in zip(items, results, strict=True) if r.ok}
    if failed and not candidates:
        from cnnapps.errors import none_read

        raise none_read(failed)
    references = {item.image_id: item.captions for item in items}
    scores = caption_scores(references, candidates, meteor=meteor) if candidates else {}
    report = {"images": len(candidates), "scores": scores, "tokenizer": "ptb" if java_available() else "simple",
              "beam": predictor.beam, "failed": failed}  # fmt: skip
    return report, [{"image_id": k, "caption": v} for k, v in candidates.items()]
