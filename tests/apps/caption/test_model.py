"""Captioner shapes for both decoders, the attention penalty, and the model file round trip (vocabulary inside)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnapps.apps.caption.model import build_captioner, caption_loss, load_captioner, save_captioner
from cnnapps.apps.caption.predictor import CaptionPredictor
from cnnapps.apps.caption.vocab import Vocabulary

VOCAB = Vocabulary.build(["a red circle above a blue square", "a green triangle on its own"])


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_teacher_forcing_shapes_and_loss(decoder):
    model = build_captioner("resnet18", VOCAB, decoder, grid=3, weights=None, embed_dim=16, hidden_dim=24,
                            attention_dim=8, d_model=16, layers=1)  # fmt: skip
    tokens = torch.tensor([VOCAB.encode("a red circle above a blue square"), VOCAB.encode("a blue square")
                           + [0] * 4])  # fmt: skip
    logits, attention = model.eval()(torch.rand(2, 3, 64, 64), tokens[:, :-1])  # eval: no attention dropout
    assert logits.shape == (2, tokens.shape[1] - 1, len(VOCAB)) and attention.shape == (2, tokens.shape[1] - 1, 9)
    assert torch.allclose(attention.sum(-1), torch.ones(2, tokens.shape[1] - 1), atol=1e-5)
    plain = caption_loss(logits, tokens[:, 1:], attention, VOCAB.pad, alpha_c=0.0)
    regularised = caption_loss(logits, tokens[:, 1:], attention, VOCAB.pad, alpha_c=1.0)
    assert regularised > plain > 0
    regularised.backward()


def test_attention_penalty_is_zero_when_each_cell_gets_total_attention_one():
    steps, cells = 4, 4
    attention = torch.eye(cells)[None]  # step t looks only at cell t
    logits = torch.zeros(1, steps, len(VOCAB))
    targets = torch.tensor([[4, 5, 6, 2]])
    base = caption_loss(logits, targets, attention, VOCAB.pad, 0.0)
    assert caption_loss(logits, targets, attention, VOCAB.pad, 1.0) == pytest.approx(float(base))


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_model_file_round_trip(tmp_path, decoder):
    torch.manual_seed(0)
    model = build_captioner("efficientnet_lite0", VOCAB, decoder, grid=4, max_len=6, d_model=32, embed_dim=32,
                            hidden_dim=32, attention_dim=16).eval()  # fmt: skip
    save_captioner(tmp_path / "cap.safetensors", model)
    loaded = load_captioner(tmp_path / "cap.safetensors")
    assert loaded.vocab == VOCAB and loaded.spec == model.spec and loaded.preprocess.mean == (0.5, 0.5, 0.5)
    image = (torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()
    a = CaptionPredictor(model=model, beam=2).predict([image])[0]
    b = CaptionPredictor(spec=tmp_path / "cap.safetensors", beam=2).predict([image])[0]
    assert a.caption == b.caption and a.score == pytest.approx(b.score, abs=1e-5)
    assert len(b.attention) == len(b.words) and all(m.shape == (4, 4) for m in b.attention)
    assert b.draw(image).shape[2] == 3


def test_the_attention_picture_is_titled_with_its_caption():
    from cnnapps.results import CaptionResult

    image = np.full((48, 64, 3), 200, np.uint8)
    maps = [np.eye(4, dtype=np.float32), np.ones((4, 4), np.float32)]

    def picture(caption: str) -> np.ndarray:
        return CaptionResult("x.png", caption=caption, words=caption.split()[:2], attention=maps).draw(image, panel=64)

    short, other = picture("a circle"), picture("a square")
    assert short.shape == other.shape
    band = short.shape[0] - (64 + 26 + 4)  # above the one row of panels (the image and 2 words)
    assert band > 0 and (short[:band] < 100).any()  # dark text on the white band
    assert not np.array_equal(short[:band], other[:band])  # the caption itself, not only the words
    long = picture(" ".join(["circle"] * 30))  # wrapped onto more lines, never cut
    assert long.shape[0] > short.shape[0] and long.shape[1] == short.shape[1]
