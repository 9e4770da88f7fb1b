"""Which images of a Karpathy-format file a captioner trains and is scored on: training takes train + restval
(with or without --val-data), ``eval caption`` takes test, and asks for --split where the file has none."""

from __future__ import annotations

import json

import pytest

from cnnapps.datasets.captions import CaptionDataError, read_captions
from cnnapps.datasets.synthetic import write_captions

SPLITS = ["train"] * 6 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 synthetic images as a COCO captions file (``caps.json``) and as a Karpathy file (``karpathy.json``, split
    as SPLITS); ``val.json`` is 4 more images to validate on."""
    root = tmp_path_factory.mktemp("karpathy")
    coco = json.loads(write_captions(root, "train", 12, seed=0, size=48).read_text())
    write_captions(root, "val", 4, seed=1, size=48)
    images = [{"filename": im["file_name"], "imgid": im["id"], "split": split,
               "sentences": [{"raw": a["caption"]} for a in coco["annotations"] if a["image_id"] == im["id"]]}
              for im, split in zip(coco["images"], SPLITS, strict=True)]  # fmt: skip
    (root / "karpathy.json").write_text(json.dumps({"images": images, "dataset": "synthetic"}))
    return root


def karpathy(data, splits):
    """The Karpathy file with only the images of ``splits``."""
    path = data / f"karpathy-{'-'.join(splits)}.json"
    images = [im for im in json.loads((data / "karpathy.json").read_text())["images"] if im["split"] in splits]
    path.write_text(json.dumps({"images": images}))
    return path


def plan_for(root, tmp_path, **options):
    import torch

    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.caption.train import _prepare

    config = CaptionConfig(images=str(root / "train"), out=str(tmp_path / "run"), backbone="resnet18", weights="none",
                           grid=2, input_size=48, batch_size=4, workers=0, embed_dim=16, hidden_dim=16,
                           attention_dim=8, **options)  # fmt: skip
    return _prepare(config, torch.device("cpu"))


def test_karpathy_training_with_val_data_takes_train_and_restval_only(data, tmp_path):
    plan = plan_for(data, tmp_path, data=str(data / "karpathy.json"), val_data=str(data / "val.json"),
                    val_images=str(data / "val"))  # fmt: skip
    assert (plan.train_images, plan.val_images) == (8, 4)  # not its val and test images too
    assert {item.split for item in plan.train_loader.dataset.items} == {"train", "restval"}


def test_karpathy_training_without_val_data_validates_on_its_val_split(data, tmp_path):
    plan = plan_for(data, tmp_path, data=str(data / "karpathy.json"))
    assert (plan.train_images, plan.val_images) == (8, 2)


def test_coco_captions_with_val_data_train_on_every_image(data, tmp_path):
    plan = plan_for(data, tmp_path, data=str(data / "train.json"), val_data=str(data / "val.json"),
                    val_images=str(data / "val"))  # fmt: skip
    assert (plan.train_images, plan.val_images) == (12, 4)


def test_eval_scores_the_test_split_of_a_karpathy_file(data):
    from cnnapps.apps.caption.cli import _split_items

    items = _split_items(read_captions, str(data / "karpathy.json"), str(data / "train"), None)
    assert [item.image_id for item in items] == [11, 12]
    items = _split_items(read_captions, str(data / "karpathy.json"), str(data / "train"), "val")
    assert [item.image_id for item in items] == [9, 10]


def test_eval_of_coco_captions_scores_every_image(data):
    from cnnapps.apps.caption.cli import _split_items

    assert len(_split_items(read_captions, str(data / "train.json"), str(data / "train"), None)) == 12


def test_eval_of_a_karpathy_file_without_test_asks_for_a_split(data, run_cli):
    from cnnapps.apps.caption.cli import _split_items

    path = karpathy(data, ["train", "val"])
    message = f"{path}: a Karpathy file without a 'test' split (it has train, val); choose one with --split"
    with pytest.raises(CaptionDataError) as caught:
        _split_items(read_captions, str(path), str(data / "train"), None)
    assert str(caught.value) == message
    code, _, err = run_cli("eval", "caption", "--model", data / "none.safetensors", "--data", path,
                           "--images", data / "train")  # fmt: skip
    assert code == 2 and message in err  # the data is read before the model


def test_a_karpathy_file_that_says_no_split_is_one_split(tmp_path):
    from cnnapps.apps.caption.cli import _split_items
    from cnnapps.datasets.captions import read_captions

    data = {"images": [{"filename": f"{i}.jpg", "sentences": [{"raw": "a red circle"}]} for i in range(4)]}
    path = tmp_path / "k.json"
    path.write_text(json.dumps(data))
    assert len(read_captions(path, tmp_path, "train")) == 4  # training reads it whole, --val-data or not
    assert len(_split_items(read_captions, str(path), str(tmp_path), None)) == 4  # eval scores it whole


def test_a_karpathy_file_as_val_data_validates_on_its_val_split_alone(data, tmp_path):
    # it validated on every image of the file, its training images too
    plan = plan_for(data, tmp_path, data=str(data / "karpathy.json"), val_data=str(data / "karpathy.json"))
    assert (plan.train_images, plan.val_images) == (8, 2)
    assert {item.split for item in plan.val_loader.dataset.items} == {"val"}


def test_a_karpathy_file_without_splits_holds_out_a_share_to_validate(data, tmp_path):
    # it trained and validated on the same 12 images
    path = tmp_path / "no-splits.json"
    images = json.loads((data / "karpathy.json").read_text())["images"]
    path.write_text(json.dumps({"images": [{k: v for k, v in im.items() if k != "split"} for im in images]}))
    plan = plan_for(data, tmp_path, data=str(path), val_split=0.25)
    assert (plan.train_images, plan.val_images) == (9, 3)
    assert not {i.path for i in plan.train_loader.dataset.items} & {i.path for i in plan.val_loader.dataset.items}
