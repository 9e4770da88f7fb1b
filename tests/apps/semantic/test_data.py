"""Semantic data: class lists, masks of every kind and their one-line errors, the three layouts, augmentation that
moves masks with pixels, and a training set that skips what it cannot use."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.semantic import (
    ClassList,
    MaskError,
    SemanticDataError,
    read_class_list,
    read_mask,
    read_semantic_data,
    semantic_transform,
    voc_colormap,
    write_mask,
)
from cnnapps.datasets.training import SemanticDataset

CLASSES = ClassList(["sky", "grass", "dot"], [(70, 130, 180), (107, 142, 35), (220, 20, 60)], (224, 224, 192), "c.txt")


def _labels() -> np.ndarray:
    labels = np.zeros((20, 30), np.int64)
    labels[10:] = 1
    labels[4:8, 5:9] = 2
    labels[0, 0] = 255
    return labels


def test_class_list_names_colours_and_ignore(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# scene classes\nsky 70 130 180\ngrass #6b8e23  # mown\npotted plant 1 2 3\nvoid 224 224 192\n")
    found = read_class_list(path)
    assert found.names == ["sky", "grass", "potted plant"]
    assert found.colours == [(70, 130, 180), (107, 142, 35), (1, 2, 3)] and found.ignore_colour == (224, 224, 192)
    assert read_class_list(_write(tmp_path / "plain.txt", "a\nb\n")).colours is None
    with pytest.raises(SemanticDataError, match=r"half\.txt: class 'b' has no colour"):
        read_class_list(_write(tmp_path / "half.txt", "a 1 2 3\nb\n"))
    with pytest.raises(SemanticDataError, match=r"twice\.txt:2: class 'a' is listed twice"):
        read_class_list(_write(tmp_path / "twice.txt", "a\na\n"))


def _write(path, text):
    path.write_text(text)
    return path


def test_index_palette_and_colour_masks_read_the_same(tmp_path):
    labels = _labels()
    cv2.imwrite(str(tmp_path / "index.png"), labels.astype(np.uint8))
    write_mask(tmp_path / "palette.png", labels, CLASSES.colours)
    colour = np.array([*CLASSES.colours, *[(0, 0, 0)] * 252, CLASSES.ignore_colour], np.uint8)[labels]
    Image.fromarray(colour).save(tmp_path / "colour.png")
    plain = ClassList(CLASSES.names, None, None, "plain")
    assert np.array_equal(read_mask(tmp_path / "index.png", plain), labels)
    assert np.array_equal(read_mask(tmp_path / "palette.png", plain), labels)  # indices, when no colours are given
    assert np.array_equal(read_mask(tmp_path / "palette.png", CLASSES), labels)  # by the palette's colours
    assert np.array_equal(read_mask(tmp_path / "colour.png", CLASSES), labels)
    assert Image.open(tmp_path / "palette.png").mode == "P"


def test_masks_that_do_not_fit_are_one_line_errors_naming_the_file(tmp_path):
    labels = _labels()
    labels[1, 1:4] = 7
    cv2.imwrite(str(tmp_path / "beyond.png"), labels.astype(np.uint8))
    with pytest.raises(MaskError) as caught:
        read_mask(tmp_path / "beyond.png", CLASSES)
    assert str(caught.value) == (f"{tmp_path / 'beyond.png'}: class index 7 at 3 pixels, beyond the 3 classes of c.txt "
                                 "(ignore index 255)")  # fmt: skip
    with pytest.raises(MaskError, match=r"small\.png: mask is 30x20 but its image is 40x20$"):
        cv2.imwrite(str(tmp_path / "small.png"), _labels().astype(np.uint8))
        read_mask(tmp_path / "small.png", CLASSES, size=(20, 40))
    odd = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    odd.putpalette([9, 9, 9] * 256)
    odd.save(tmp_path / "odd.png")
    with pytest.raises(MaskError, match=r"odd\.png: colour \(9, 9, 9\) at 16 pixels is not in c\.txt$"):
        read_mask(tmp_path / "odd.png", CLASSES)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match=r"junk\.png: not a readable mask image"):
        read_mask(tmp_path / "junk.png", CLASSES)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from cnnapps.apps.semantic.synthetic import main

    root = tmp_path_factory.mktemp("scenes")
    main([str(root / "voc"), "--train", "4", "--val", "2", "--size", "64"])
    main([str(root / "folders"), "--train", "3", "--val", "1", "--size", "48", "--format", "folders"])
    return root


def test_voc_folders_and_coco_layouts(scenes):
    voc = read_semantic_data(scenes / "voc", split="val")
    assert len(voc) == 2 and voc.class_names == ["sky", "water", "grass", "circle", "square", "triangle"]
    image, labels = voc.load(0)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and set(np.unique(labels)) <= set(range(6))
    coco = read_semantic_data(scenes / "voc/annotations/semantic_val.json", images=scenes / "voc/JPEGImages")
    assert coco.class_names == voc.class_names and np.array_equal(coco.load(0)[1], labels)
    things = read_semantic_data(scenes / "voc/annotations/instances_val.json", images=scenes / "voc/JPEGImages")
    assert things.class_names == ["background", "circle", "square", "triangle"]
    painted = things.load(0)[1]
    assert np.array_equal(painted == 0, labels < 3)  # every stuff pixel is background there
    folders = read_semantic_data(scenes / "folders/train")
    assert len(folders) == 3 and folders.load(2)[0].shape == (48, 48, 3)
    with pytest.raises(SemanticDataError, match="give the mask folder with --masks"):
        read_semantic_data(scenes / "folders")
    with pytest.raises(SemanticDataError, match=r"needs its image folder \(--images\)"):
        read_semantic_data(scenes / "voc/annotations/semantic_val.json")


def test_augmentation_moves_masks_with_pixels_and_ignores_new_border():
    from cnnapps.backbones.preprocess import Preprocess

    rng = np.random.default_rng(0)
    labels = np.zeros((64, 80), np.int64)
    labels[:, 40:] = 1
    labels[20:30, 10:25] = 2
    colours = np.array([(0, 0, 255), (0, 255, 0), (255, 0, 0)], np.uint8)
    image = colours[labels]
    fit = Preprocess(input_size=(3, 48, 48), resize=48, resize_mode="squash", mean=(0, 0, 0), std=(1, 1, 1))
    apply = semantic_transform("default", fit, ignore_index=255)
    ignored = 0
    for _ in range(12):
        noisy = np.clip(image.astype(np.int64) - rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
        pixels, mask = apply(noisy, labels)
        assert pixels.shape == (3, 48, 48) and mask.shape == (48, 48) and mask.dtype == np.int64
        assert set(np.unique(mask)) <= {0, 1, 2, 255}  # nearest neighbour: no blended class values
        dominant = pixels.argmax(0)  # the brightest channel names the class painted there
        padded = np.pad(mask, 1, mode="edge")
        same = np.stack([padded[1 + dy : 49 + dy, 1 + dx : 49 + dx] == mask for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        inside = (mask != 255) & same.all(0)  # away from class edges, where resized pixels blend
        agree = (dominant[inside] == np.array([2, 1, 0])[mask[inside]]).mean()
        assert agree > 0.99
        ignored += int((mask == 255).sum())
    assert ignored > 0  # shifts and rotations bring in pixels from outside, which are ignored


def test_training_set_skips_bad_items_with_a_warning_naming_them(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\n")
    for name, mask in (("good", np.zeros((8, 8))), ("wrongsize", np.zeros((4, 8))), ("beyond", np.full((8, 8), 5))):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask.astype(np.uint8))
    data = read_semantic_data(tmp_path)
    assert [p.image.stem for p in data.items] == ["beyond", "good", "wrongsize"]
    dataset = SemanticDataset(data, preprocess=lambda rgb: rgb.transpose(2, 0, 1).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="cnnapps"):
        items = [dataset[i] for i in range(3)]
    assert all(mask.shape == (8, 8) for _, mask in items)
    warned = [r.getMessage() for r in caplog.records]
    assert any("beyond.png: class index 5 at 64 pixels" in w for w in warned)
    assert any("wrongsize.png: mask is 8x4 but its image is 8x8" in w for w in warned)


def test_voc_colour_map_starts_as_pascal_voc():
    assert voc_colormap(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]


def test_a_mask_folder_inside_the_image_folder_is_not_read_as_images(tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\n")
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((6, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "photo.png"), np.ones((6, 6), np.uint8))
    data = read_semantic_data(tmp_path, masks=tmp_path / "masks")
    assert [(i.image.name, i.mask.parent.name) for i in data.items] == [("photo.png", "masks")]
    assert data.load(0)[1].sum() == 36


def test_images_of_one_name_in_two_subfolders_keep_their_own_masks(tmp_path, caplog):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    for label, kind in enumerate(("cats", "dogs"), start=1):
        for folder in ("images", "masks"):
            (tmp_path / folder / kind).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "images" / kind / "000.png"), np.full((6, 6, 3), 40 * label, np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / kind / "000.png"), np.full((6, 6), label, np.uint8))
    (tmp_path / "images" / "other").mkdir()  # a name found once on each side pairs across layouts
    cv2.imwrite(str(tmp_path / "images" / "other" / "lone.png"), np.zeros((6, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "lone.png"), np.zeros((6, 6), np.uint8))
    data = read_semantic_data(tmp_path)
    pairs = [(i.image.relative_to(tmp_path).as_posix(), i.mask.relative_to(tmp_path).as_posix()) for i in data.items]
    assert pairs == [("images/cats/000.png", "masks/cats/000.png"), ("images/dogs/000.png", "masks/dogs/000.png"),
                     ("images/other/lone.png", "masks/lone.png")]  # fmt: skip
    assert [int(data.load(i)[1].max()) for i in range(3)] == [1, 2, 0]
    (tmp_path / "masks" / "dogs" / "000.png").rename(tmp_path / "masks" / "000.png")  # now ambiguous: not guessed
    with caplog.at_level(logging.WARNING, logger="cnnapps"):
        data = read_semantic_data(tmp_path)
    assert [i.image.parent.name for i in data.items] == ["cats", "other"]
    assert "1 image of" in caplog.text and "has no mask" in caplog.text
    assert f"1 mask of {tmp_path / 'masks'} has no image in" in caplog.text  # the renamed one: ambiguous
    caplog.clear()
    (tmp_path / "images" / "cats" / "000.png").unlink()  # an image gone, its mask left: said as the reverse is
    with caplog.at_level(logging.WARNING, logger="cnnapps"):
        read_semantic_data(tmp_path)
    assert f"2 masks of {tmp_path / 'masks'} have no image in" in caplog.text
