"""`cnnapps train caption`, `caption` and `eval caption` end to end on a tiny synthetic set."""

from __future__ import annotations

import json

import pytest

from cnnapps.datasets.captions import CaptionDataError, read_captions
from cnnapps.datasets.synthetic import captioned_scene, write_captions

TINY = ("--backbone", "resnet18", "--weights", "none", "--grid", "2", "--input-size", "48", "--epochs", "1",
        "--batch-size", "8", "--workers", "0")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    write_captions(root, "train", 16, seed=0, size=64)
    write_captions(root, "val", 4, seed=1, size=64)
    return root


@pytest.fixture(scope="module")
def captioner(data, tmp_path_factory):
    from cnnapps.cli import main

    out = tmp_path_factory.mktemp("runs") / "cap"
    args = ["train", "caption", "--data", data / "train.json", "--images", data / "train", "--val-data",
            data / "val.json", "--val-images", data / "val", "--out", out, *TINY]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert not done.value.code
    return out


def test_synthetic_captions_follow_the_scene():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        _, captions = captioned_scene(rng, 128)
        assert len(captions) == 2
        words = captions[0].split()
        if "of" in words or "above" in words or "below" in words:  # the second says it the other way round
            inverse = {"above": "below", "below": "above", "left": "right", "right": "left"}
            rel = next(w for w in words if w in inverse)
            assert inverse[rel] in captions[1].split()


def test_karpathy_and_coco_formats(tmp_path):
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": "A cat."}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 2,
         "sentences": [{"tokens": ["a", "dog"]}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "cocoid": 3, "sentences": [{"raw": "A cow."}]},
    ]}  # fmt: skip
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    train = read_captions(tmp_path / "k.json", tmp_path, "train")
    assert [i.image_id for i in train] == [1, 2] and train[1].captions == ["a dog"]
    assert train[0].path == tmp_path / "val2014" / "a.jpg"
    assert [i.image_id for i in read_captions(tmp_path / "k.json", tmp_path, "test")] == [3]
    with pytest.raises(CaptionDataError, match="no captioned images in split 'val'"):
        read_captions(tmp_path / "k.json", tmp_path, "val")
    (tmp_path / "bad.json").write_text('{"annotations": []}')
    with pytest.raises(CaptionDataError, match="no 'images' list"):
        read_captions(tmp_path / "bad.json", tmp_path)


def test_a_coco_captions_file_alone_holds_out_a_share_to_validate_on(data, tmp_path):
    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.caption.train import train_captioner

    out = tmp_path / "run"
    config = CaptionConfig(data=str(data / "train.json"), images=str(data / "train"), out=str(out),
                           backbone="resnet18", weights="none", grid=2, input_size=48, epochs=1, batch_size=8,
                           workers=0, val_split=0.25)  # fmt: skip
    metrics = train_captioner(config)
    assert (metrics["train_images"], metrics["val_images"]) == (12, 4)  # not validated on its own training images
    assert [i.split for i in read_captions(data / "train.json", data / "train")] == [None] * 16


def test_train_writes_the_run_folder(captioner):
    for name in ("model.safetensors", "metrics.json", "curves.png", "config.yaml"):
        assert (captioner / name).is_file(), name
    metrics = json.loads((captioner / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val_bleu4"] <= 1.0 and metrics["vocabulary"] > 10


def test_caption_json_beam_and_attention_pictures(run_cli, data, captioner, tmp_path):
    image = data / "val" / "captions_00000.png"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = run_cli("caption", image, tmp_path / "broken.png", "--model", captioner / "model.safetensors",
                             "--beam", "3", "--json", "--save-attention", tmp_path / "att")  # fmt: skip
    assert code == 1 and "broken.png" in err
    ok, bad = json.loads(out)
    assert set(ok) == {"path", "caption", "score", "engine"} and ok["score"] <= 0 and "error" in bad
    (picture,) = (tmp_path / "att").iterdir()
    assert picture.name == "captions_00000-attention.png" and picture.stat().st_size > 1000


def test_eval_caption_json(run_cli, data, captioner, tmp_path, monkeypatch):
    from cnnapps.apps.caption import evaluate

    class Meteor:  # pycocoevalcap's own runs a JVM that loads its paraphrase table (8 s): what is tested is the wiring
        def compute_score(self, gts, res):
            assert gts.keys() == res.keys() and all(isinstance(c, str) for v in res.values() for c in v)
            return 0.25, [0.25] * len(res)

    monkeypatch.setattr("pycocoevalcap.meteor.meteor.Meteor", Meteor)
    code, out, err = run_cli("eval", "caption", "--model", captioner / "model.safetensors", "--data",
                             data / "val.json", "--images", data / "val", "--json",
                             "--save-results", tmp_path / "res.json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 4 and {"bleu1", "bleu4", "cider"} <= set(report["scores"])
    # with Java: captions tokenised by PTB's tokenizer and METEOR scored (the stand-in's 0.25)
    assert report["scores"].get("meteor") == (0.25 if evaluate.java_available() else None)
    assert len(json.loads((tmp_path / "res.json").read_text())) == 4
    # the table: without Java (its tokenizer and METEOR cost seconds, and the JSON run above had them)
    monkeypatch.setattr("cnnapps.apps.caption.evaluate.java_available", lambda: False)
    code, out, _ = run_cli("eval", "caption", "--model", captioner / "model.safetensors", "--data",
                           data / "val.json", "--images", data / "val")  # fmt: skip
    assert code == 0 and "BLEU-1 " in out and "BLEU-4 " in out and "CIDEr " in out and "BLEU1" not in out


def test_missing_model_file_is_a_clear_error(run_cli, data, tmp_path):
    code, _, err = run_cli("caption", data / "val" / "captions_00000.png", "--model", tmp_path / "missing.safetensors")
    assert code == 2 and "missing.safetensors" in err


def test_encoder_stays_frozen_unless_fine_tuned(run_cli, data, captioner, tmp_path):
    import lightning as L
    from safetensors.torch import load_file

    from cnnapps.backbones import create_backbone

    args = ("--data", data / "train.json", "--images", data / "train", "--val-split", "0.25", "--out", tmp_path / "ft")
    code, _, err = run_cli("train", "caption", *args, "--fine-tune-after", "0", *TINY)
    assert code == 0, err
    L.seed_everything(0, verbose=False)  # the runs' seed: the encoder both runs started from
    start = create_backbone("resnet18", weights=None).state_dict()
    frozen = load_file(captioner / "model.safetensors")
    tuned = load_file(tmp_path / "ft" / "model.safetensors")
    key = "trunk.body.C3.layer2.0.conv1.weight"  # the model file keeps the trunk apart from the heads
    assert frozen[key].equal(start["body.C3.layer2.0.conv1.weight"])
    assert not tuned[key].equal(frozen[key])
