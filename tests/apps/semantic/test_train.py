"""Which data semantic training reads: a validation set finds its own masks (``--val-masks``, or its own layout),
never those of the training ``--masks`` folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnapps.apps.semantic.config import SemanticConfig
from cnnapps.apps.semantic.train import read_data
from cnnapps.datasets.semantic import SemanticDataError


def _pairs(images, masks, value: int) -> None:
    """Two 4x4 images a.png and b.png in ``images`` and, with ``masks``, their masks of class ``value`` there."""
    images.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.new("RGB", (4, 4)).save(images / f"{name}.png")
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(masks / f"{name}.png")


def test_validation_masks_are_the_validation_datas_own(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    _pairs(tmp_path / "train", tmp_path / "train_masks", 0)  # file names as the validation images'
    _pairs(tmp_path / "val" / "images", tmp_path / "val" / "masks", 1)
    classes = str(tmp_path / "classes.txt")
    common = {"data": str(tmp_path / "train"), "masks": str(tmp_path / "train_masks"), "classes": classes}
    _, val = read_data(SemanticConfig(**common, val_data=str(tmp_path / "val")))
    assert [item.mask.parent.name for item in val.items] == ["masks", "masks"]
    assert val.load(0)[1].min() == 1  # its own truth, not the training mask of the same name
    given = {"val_data": str(tmp_path / "val" / "images"), "val_masks": str(tmp_path / "val" / "masks")}
    _, val = read_data(SemanticConfig(**common, **given))
    assert val.load(1)[1].min() == 1
    _pairs(tmp_path / "flat", None, 0)
    with pytest.raises(SemanticDataError, match=r"flat: no masks for the validation images .* with --val-masks$"):
        read_data(SemanticConfig(**common, val_data=str(tmp_path / "flat")))
    for name in ("val_masks", "val_images"):  # without --val-data they were ignored, not a word said
        with pytest.raises(SemanticDataError, match=rf"^--{name.replace('_', '-')} .*: it belongs to --val-data"):
            read_data(SemanticConfig(**common, **{name: str(tmp_path / "val" / "masks")}))


def _shared_head_on_a_cropping_trunk(root):
    """An FPN head trained with ``--trunk timm:test_resnet`` (whose preprocessing resizes to 168 and crops 160) on
    synthetic scenes whose validation images are cut to other shapes (a strip, a tall one, one left square)."""
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.semantic.synthetic import main as synthetic
    from cnnapps.apps.semantic.train import train_semantic

    scenes = root / "scenes"
    synthetic([str(scenes), "--train", "4", "--val", "3", "--size", "64"])
    for stem, box in (("val_00000", (0, 0, 64, 24)), ("val_00001", (0, 0, 28, 64))):
        for path in (scenes / "JPEGImages" / f"{stem}.jpg", scenes / "SegmentationClass" / f"{stem}.png"):
            Image.open(path).crop(box).save(path)
    config = load_config(None, SemanticConfig, data=str(scenes), trunk="timm:test_resnet", weights="none", head="fpn",
                         head_channels=8, epochs=1, batch_size=3, workers=0, progress=False,
                         out=str(root / "run"))  # fmt: skip
    return scenes, train_semantic(config)


def test_a_head_trained_on_a_cropping_trunk_sees_whole_images_in_validation_eval_and_prediction(
    tmp_path, run_cli, capsys, caplog
):
    """Trained on the trunk's crops, but validated, evaluated and run on whole images: no pixel is guessed from
    the crop's edge (before, a 96x32 strip had two thirds of its pixels copied from the crop's edge columns)."""
    import json

    import cnnapps

    scenes, metrics = _shared_head_on_a_cropping_trunk(tmp_path)
    capsys.readouterr()  # what making the scenes printed
    model = tmp_path / "run" / "model.safetensors"
    code, out, err = run_cli("eval", "semantic", "--model", model, "--data", scenes, "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 3
    assert json.loads(out)["miou"] == pytest.approx(metrics["val_miou"], abs=1e-9)
    assert metrics["history"][-1]["val_miou"] == pytest.approx(metrics["val_miou"], abs=1e-9)  # in-training too
    predictor = cnnapps.load(model)
    strip = np.array(Image.open(scenes / "JPEGImages" / "train_00000.jpg").resize((96, 32)))
    changed = strip.copy()
    changed[:, :8] = 255 - changed[:, :8]  # the strip's left end, far outside a centre crop of its middle
    before, after = predictor.logits([strip, changed])
    assert not torch.allclose(before[:, :, :8], after[:, :, :8])
    # in a multi-head file the heads share the trunk's cropped pass: said once, in one line
    from cnnapps.apps.modelfile import compose

    two = compose([model, model], tmp_path / "two.safetensors", names=["coast", "fields"])
    with caplog.at_level("WARNING", logger="cnnapps"):
        cnnapps.load(two).predict([strip, changed])
    said = [r.getMessage() for r in caplog.records if "centre crop" in r.getMessage()]
    assert said == ["semantic head (loaded alone, task='semantic', it sees the whole image): the shared trunk's "
                    "centre crop leaves 70 % of a 96x32 image's pixels unseen (they take the crop's edge)"]  # fmt: skip
