"""What a captioner refuses in one line: decoding options it cannot work with, damaged heads, bad settings; and
picking one caption head of a file that has several."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnapps.apps.caption.model import build_captioner, load_captioner, save_captioner
from cnnapps.apps.caption.predictor import CaptionPredictor
from cnnapps.apps.caption.vocab import Vocabulary
from cnnapps.apps.modelfile import compose
from cnnapps.apps.multitask import MultiTaskPredictor
from cnnapps.bundle import BundleError
from cnnapps.errors import CnnappsError
from tests.conftest import rewrite_metadata_file

VOCAB = Vocabulary.build(["a red circle above a blue square", "a green triangle on its own"])
TINY = {"grid": 2, "max_len": 4, "weights": None, "embed_dim": 8, "hidden_dim": 8, "attention_dim": 8, "d_model": 8,
        "layers": 1}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An LSTM and a Transformer captioner on one trunk, each alone and both in one file."""
    root = tmp_path_factory.mktemp("captioners")
    torch.manual_seed(0)
    lstm = build_captioner("resnet18", VOCAB, "lstm", **TINY).eval()
    transformer = build_captioner("resnet18", VOCAB, "transformer", trunk=lstm.encoder.backbone, **TINY).eval()
    save_captioner(root / "lstm.safetensors", lstm)
    save_captioner(root / "transformer.safetensors", transformer)
    compose([root / "lstm.safetensors", root / "transformer.safetensors"], root / "both.safetensors")
    return {"lstm": root / "lstm.safetensors", "transformer": root / "transformer.safetensors",
            "both": root / "both.safetensors"}  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from cnnapps.datasets.synthetic import write_captions

    root = tmp_path_factory.mktemp("photos")
    write_captions(root, "val", 2, seed=1, size=64)
    return root


def test_the_caption_commands_take_one_head_of_a_file_with_several(run_cli, files, photos) -> None:
    image = sorted((photos / "val").glob("*.png"))[0]
    code, _, err = run_cli("caption", "-m", files["both"], image)
    assert code == 2 and "several heads (caption, caption-transformer); name the one to use" in err
    code, alone, _ = run_cli("caption", "-m", files["transformer"], "--json", image)
    assert code == 0
    code, picked, _ = run_cli("caption", "-m", files["both"], "--head", "caption-transformer", "--json", image)
    assert code == 0 and json.loads(picked) == json.loads(alone)
    scores = []
    for model, head in ((files["lstm"], []), (files["both"], ["--head", "caption"])):
        code, out, _ = run_cli("eval", "caption", "-m", model, *head, "--data", photos / "val.json", "--images",
                               photos / "val", "--json")  # fmt: skip
        assert code == 0
        scores.append(json.loads(out)["scores"])
    assert scores[0] == scores[1]


@pytest.mark.parametrize("load", ["one head", "multi-head"])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"beam": 0}, "beam=0: captions kept at each step of the search, a whole number of at least 1"),
        ({"beam": -1}, "beam=-1: captions kept at each step of the search, a whole number of at least 1"),
        ({"beam": 2.5}, "beam=2.5: captions kept at each step of the search, a whole number of at least 1"),
        ({"beam": "3"}, "beam='3': captions kept at each step of the search, a whole number of at least 1"),
        ({"beam": True}, "beam=True: captions kept at each step of the search, a whole number of at least 1"),
        ({"max_len": 0}, "max_len=0: the most words per caption, a whole number of at least 1"),
        ({"max_len": -3, "beam": 2}, "max_len=-3: the most words per caption, a whole number of at least 1"),
        ({"max_len": 4.0}, "max_len=4.0: the most words per caption, a whole number of at least 1"),
        (
            {"max_len": 5},
            "--max-len must be at most 4 for this Transformer captioner (it has trained positions for 4 words), not 5",
        ),
    ],
)
def test_decoding_options_a_captioner_cannot_use_are_one_line_errors(files, load, options, message) -> None:
    with pytest.raises(CnnappsError) as error:
        if load == "one head":
            CaptionPredictor(files["transformer"], **options)
        else:
            MultiTaskPredictor(files["both"], **options)
    assert str(error.value) == message


def test_an_lstm_writes_past_its_trained_length_and_a_transformer_up_to_it(files) -> None:
    image = (torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()
    assert len(CaptionPredictor(files["lstm"], max_len=9).predict([image])[0].words) <= 9
    multi = MultiTaskPredictor(files["both"], max_len=4, beam=2).predict([image])[0]
    assert multi.ok and len(multi.results["caption-transformer"].words) <= 4


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("grid", None, "grid must be a whole number of at least 1, not None"),
        ("max_len", None, "max_len must be a whole number of at least 1, not None"),
        ("decoder_kwargs", {"hidden_dim": "x"}, "TypeError"),
    ],
)
def test_a_damaged_caption_head_is_one_line_however_the_file_is_loaded(files, tmp_path, key, value, reason) -> None:
    damaged = rewrite_metadata_file(files["both"], tmp_path / "damaged.safetensors",
                                lambda meta: meta["heads"]["caption"]["kwargs"].update({key: value}))  # fmt: skip
    expected = f"{damaged}: heads.caption: its settings do not build a caption head ("
    for load in (lambda: MultiTaskPredictor(damaged), lambda: load_captioner(damaged, "caption")):
        with pytest.raises(BundleError) as error:
            load()
        assert str(error.value).startswith(expected) and reason in str(error.value)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "key, value",
    [
        *(("grid", value) for value in (0, "seven", 2.5, True, 65, 100_000)),
        *(("max_len", value) for value in (0, 201, 10**9)),
    ],
)
def test_a_caption_head_s_grid_and_length_are_bounded_when_its_header_is_read(files, tmp_path, key, value) -> None:
    """A grid of 600 took 4.9 GB, one of 100,000 asked for 51 TB naming neither file nor key, and a max_len of 10**9
    decoded for minutes: the header is refused before anything is built."""
    from cnnapps.apps.modelfile import read_model_file

    damaged = rewrite_metadata_file(files["both"], tmp_path / "damaged.safetensors",
                                    lambda meta: meta["heads"]["caption"]["kwargs"].update({key: value}))  # fmt: skip
    most = {"grid": 64, "max_len": 200}[key]
    with pytest.raises(BundleError) as error:
        read_model_file(damaged)
    assert str(error.value) == (f"{damaged}: heads.caption.kwargs.{key}: expected a whole number from 1 to {most}, "
                                f"found {value!r}")  # fmt: skip
    rewrite_metadata_file(files["both"], tmp_path / "edge.safetensors",
                          lambda meta: meta["heads"]["caption"]["kwargs"].update({key: most}))  # fmt: skip
    assert read_model_file(tmp_path / "edge.safetensors").heads["caption"].kwargs[key] == most


def test_training_refuses_a_grid_no_model_file_may_hold() -> None:
    from cnnapps.apps.common.config import ConfigError

    with pytest.raises(ConfigError, match=r"^grid: must be between 1 and 64, not 65$"):
        build_captioner("resnet18", VOCAB, "lstm", **{**TINY, "grid": 65})


def test_a_transformer_width_its_attention_heads_cannot_split_is_refused() -> None:
    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.common.config import ConfigError

    config = CaptionConfig(data="c.json", images="images", decoder="transformer", embed_dim=10)
    with pytest.raises(ConfigError, match=r"^embed_dim: the Transformer decoder splits it over 4 attention heads, "
                                          r"so it must be a multiple of 4, not 10$"):  # fmt: skip
        config.validate()
    CaptionConfig(data="c.json", images="images", decoder="lstm", embed_dim=10).validate()
    CaptionConfig(data="c.json", images="images", decoder="transformer", embed_dim=12).validate()
