"""Greedy and beam search over any caption decoder's ``init_state`` / ``step`` interface.

A sequence ends at ``<end>`` (never extended after it) or when ``max_len`` words are written (then
``<end>`` is forced); ``<pad>``, ``<start>`` and ``<unk>`` are never generated. Scores are sums of
log-probabilities, ``<end>`` included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cnnapps.apps.caption.vocab import Vocabulary


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <start> and <end>
    score: float  # log-probability of the words and the final <end>
    attention: list[np.ndarray] = field(default_factory=list)  # one (cells,) map per word

    def words(self, vocab: Vocabulary) -> list[str]:
        return vocab.decode(self.tokens)


def _allowed(logp: torch.Tensor, vocab: Vocabulary, force_end: bool) -> torch.Tensor:
    logp = logp.clone()
    if force_end:
        end = logp[:, vocab.end].clone()
        logp[:] = -torch.inf
        logp[:, vocab.end] = end
    else:
        logp[:, [vocab.pad, vocab.start, vocab.unk]] = -torch.inf
    return logp


@torch.inference_mode()
def greedy(decoder: torch.nn.Module, features: torch.Tensor, vocab: Vocabulary, max_len: int) -> list[Hypothesis]:
    """The most likely next word at every step, for a batch of feature grids (N, cells, C)."""
    n = features.shape[0]
    state = decoder.init_state(features)
    tokens = torch.full((n,), vocab.start, dtype=torch.long, device=features.device)
    out = [Hypothesis([], 0.0) for _ in range(n)]
    done = np.zeros(n, bool)
    for t in range(max_len + 1):
        logits, state, alpha = decoder.step(state, tokens)
        logp = _allowed(torch.log_softmax(logits.float(), -1), vocab, force_end=t == max_len)
        score, tokens = logp.max(-1)
        for i in np.flatnonzero(~done):
            out[i].score += float(score[i])
            if int(tokens[i]) == vocab.end:
                done[i] = True
            else:
                out[i].tokens.append(int(tokens[i]))
                out[i].attention.append(alpha[i].float().cpu().numpy())
        if done.all():
            break
    return out


@torch.inference_mode()
def beam_search(
    decoder: torch.nn.Module, features: torch.Tensor, vocab: Vocabulary, beam: int, max_len: int
) -> Hypothesis:
    """The highest-scoring caption for one feature grid (1, cells, C) found with ``beam`` open hypotheses.

    Each step ranks the top ``2 * beam`` extensions: an ``<end>`` among the first ``beam`` of them finishes a
    caption, and the best ``beam`` others stay open, so a finished caption is replaced (``beam`` 1 is greedy).
    Search stops when no open hypothesis can still beat the best finished one (scores only fall as words are
    added). It is a search, not an enumeration: the best caption of all is certain only when ``beam`` is at least the
    number of captions of up to ``max_len`` words; a narrower beam may miss it."""
    if beam < 1 or max_len < 0:
        raise ValueError(f"beam search needs beam >= 1 and max_len >= 0, not beam {beam} and max_len {max_len}")
    state = decoder.init_state(features)
    tokens = torch.full((1,), vocab.start, dtype=torch.long, device=features.device)
    scores = torch.zeros(1, device=features.device)
    seqs: list[list[int]] = [[]]
    maps: list[list[np.ndarray]] = [[]]
    finished: list[Hypothesis] = []
    for t in range(max_len + 1):
        logits, state, alpha = decoder.step(state, tokens)
        logp = _allowed(torch.log_softmax(logits.float(), -1), vocab, force_end=t == max_len) + scores[:, None]
        vocab_size = logp.shape[1]
        top, flat = logp.reshape(-1).topk(min(2 * beam, int(torch.isfinite(logp).sum())))
        keep_rows, keep_tokens, keep_scores, new_seqs, new_maps = [], [], [], [], []
        for rank, (score, index) in enumerate(zip(top.tolist(), flat.tolist(), strict=True)):
            row, word = divmod(index, vocab_size)
            if word == vocab.end:
                if rank < beam:
                    finished.append(Hypothesis(list(seqs[row]), score, maps[row]))
            elif len(keep_rows) < beam:
                keep_rows.append(row)
                keep_tokens.append(word)
                keep_scores.append(score)
                new_seqs.append([*seqs[row], word])
                new_maps.append([*maps[row], alpha[row].float().cpu().numpy()])
        best_done = max((h.score for h in finished), default=-np.inf)
        if not keep_rows or max(keep_scores) <= best_done:
            break
        index = torch.tensor(keep_rows, device=features.device)
        state = tuple(s.index_select(0, index) for s in state)
        tokens = torch.tensor(keep_tokens, device=features.device)
        scores = torch.tensor(keep_scores, device=features.device)
        seqs, maps = new_seqs, new_maps
    return max(finished, key=lambda h: h.score)
