"""``train retrieve`` validates on classes never trained on (metric learning's usual test: CUB, Cars, SOP), and
its number options take ``none`` on the command line as a recipe takes null."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import cnnapps
from cnnapps.apps.common.config import load_config
from cnnapps.apps.retrieve.config import RetrieveConfig
from cnnapps.apps.retrieve.train import train_retrieval

#: six colours: the first trains, the rest may validate as classes never trained on
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40), "yellow": (230, 220, 40),
           "cyan": (40, 220, 230), "magenta": (220, 40, 220)}  # fmt: skip


def write_split(root: Path, train: list[str], val: list[str], per_class: int = 6) -> Path:
    """DIR/train/<colour>/ and DIR/val/<colour>/ of 32x32 PNGs: a noisy square of the colour on grey."""
    rng = np.random.default_rng(0)
    for part, names in (("train", train), ("val", val)):
        for name in names:
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.full((32, 32, 3), 128, np.uint8)
                x, y = rng.integers(0, 12, size=2)
                img[y : y + 20, x : x + 20] = COLOURS[name]
                img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), img[:, :, ::-1])
    return root


def _config(data: Path, out: Path, **overrides) -> RetrieveConfig:
    settings = dict(data=str(data), backbone="lenet5", weights="none", embedding_size=8, epochs=2, batch_size=6,
                    workers=0, progress=False, augment="none", out=str(out), lr=0.01)  # fmt: skip
    return load_config(None, RetrieveConfig, **{**settings, **overrides})


def test_arcface_validates_on_classes_it_never_trained_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = write_split(tmp_path / "disjoint", ["blue", "green", "red"], ["yellow", "cyan", "magenta"])
    # no validation loss here: early stopping and the plateau schedule follow recall@1 (else: val_loss not found)
    with caplog.at_level("INFO", logger="cnnapps"):
        metrics = train_retrieval(_config(data, tmp_path / "run", schedule="plateau", patience=1))
    assert (
        "validating on 18 (3 classes not trained on; no validation loss: ArcFace's needs images of trained "
        "classes)" in caplog.text
    )
    assert metrics["train_images"] == 18 and metrics["val_images"] == 18
    assert isinstance(metrics["val_recall@1"], float) and 0.0 <= metrics["val_map@r"] <= 1.0
    assert metrics["val_loss"] is None and all("val_loss" not in entry for entry in metrics["history"])
    assert metrics["best_epoch"] in (1, 2)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())  # NaN would not be JSON
    assert written["val_loss"] is None and (tmp_path / "run" / "curves.png").is_file()
    assert cnnapps.load(tmp_path / "run" / "model.safetensors").dim == 8


def test_arcface_validation_loss_is_of_the_trained_classes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = write_split(tmp_path / "mixed", ["blue", "green", "red"], ["red", "yellow"])
    with caplog.at_level("INFO", logger="cnnapps"):
        metrics = train_retrieval(_config(data, tmp_path / "run", epochs=1))
    assert "(1 class not trained on; the validation loss is of the 6 images of trained classes)" in caplog.text
    assert metrics["val_images"] == 12
    losses = [entry["val_loss"] for entry in metrics["history"]]
    assert losses and all(np.isfinite(loss) and loss > 0 for loss in losses)
    assert metrics["val_loss"] == losses[0]


def test_a_pair_loss_has_a_validation_loss_on_classes_never_trained_on(tmp_path: Path) -> None:
    data = write_split(tmp_path / "disjoint", ["blue", "green", "red"], ["yellow", "cyan"])
    metrics = train_retrieval(_config(data, tmp_path / "run", epochs=1, loss="multisimilarity"))
    assert metrics["val_images"] == 12 and np.isfinite(metrics["history"][0]["val_loss"])


def test_the_command_line_takes_none_for_the_embedding_size(run_cli, tmp_path: Path) -> None:
    data = write_split(tmp_path / "data", ["blue", "green"], ["blue", "green"])
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("train", "retrieve", "--data", data, "--backbone", "lenet5", "--weights", "none",
                                   "--embedding-size", "none", "--epochs", "1", "--batch-size", "6", "--workers", "0",
                                   "--augment", "none", "--out", out, "--json")  # fmt: skip
    assert code == 0, stderr
    assert "val_recall@1" in json.loads(stdout)
    from cnnapps.backbones import create_backbone

    own = create_backbone("lenet5", weights=None).embedding_dim
    assert own != 128 and cnnapps.load(out / "model.safetensors").dim == own  # the backbone's own: no projection
    code, _, stderr = run_cli("train", "retrieve", "--data", data, "--embedding-size", "5x", "--out", tmp_path / "x")
    assert code == 2 and "expected an integer or none, not '5x'" in stderr


@pytest.mark.parametrize("word", ["none", "None"])
def test_a_recipe_may_say_none_for_a_number_that_may_be_none(word: str) -> None:
    assert load_config(None, RetrieveConfig, data="x", embedding_size=word).embedding_size is None
