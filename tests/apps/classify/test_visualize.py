from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnapps.apps.classify.model import load_classifier
from cnnapps.apps.classify.visualize import activation_maps, first_layer_filters, grad_cam, top_patches
from cnnapps.errors import CnnappsError


@pytest.fixture(scope="module")
def lite0():
    return load_classifier("efficientnet_lite0")


def test_grad_cam_finds_the_cat_on_its_side_of_the_picture(lite0, chelsea) -> None:
    import cv2

    cat = cv2.resize(chelsea, (224, 224))
    canvas = np.full((224, 448, 3), 127, np.uint8)
    canvas[:, :224] = cat  # cat on the left, flat grey on the right
    lite0_view = lite0.preprocess
    assert lite0_view.resize_mode == "crop"
    cam = grad_cam(lite0, canvas, target="tiger cat")
    assert cam.label == "tiger cat" and cam.heatmap.shape == (224, 224)
    assert cam.heatmap.min() >= 0.0 and cam.heatmap.max() == pytest.approx(1.0)
    # the centre crop of the 256x512 resize spans both halves: the cat occupies its left ~40%
    left, right = cam.heatmap[:, :80].sum(), cam.heatmap[:, 144:].sum()
    assert left > 3 * right
    overlay = cam.overlay()
    assert overlay.dtype == np.uint8 and overlay.shape[2] == 3


def test_grad_cam_class_names_are_checked(lite0, chelsea) -> None:
    with pytest.raises(CnnappsError, match="not a class of this model; did you mean tabby"):
        grad_cam(lite0, chelsea, target="tabbby")
    with pytest.raises(CnnappsError, match=r"^--class bogus: not a class of this model$"):  # not 'did you mean mouse'
        grad_cam(lite0, chelsea, target="bogus")
    with pytest.raises(CnnappsError, match=r"0\.\.999"):
        grad_cam(lite0, chelsea, target=1000)


def test_first_layer_filters_grid(lite0) -> None:
    grid = first_layer_filters(lite0.model, tile_size=10)
    n = lite0.model.model.conv_stem.out_channels  # 32 filters -> a 6x6 grid of 10px tiles, 2px gaps
    columns = int(np.ceil(np.sqrt(n)))
    assert grid.shape == (6 * 12 + 2, columns * 12 + 2, 3)


def test_activation_maps(lite0, chelsea) -> None:
    grid = activation_maps(lite0, chelsea, "C3", limit=16)
    assert grid.ndim == 3 and grid.dtype == np.uint8
    with pytest.raises(CnnappsError, match="has stages C1, C2, C3, C4, C5"):
        activation_maps(lite0, chelsea, "C9")


def test_top_patches_are_the_strongest_responses(lite0, tmp_path, chelsea) -> None:
    from skimage import data

    from cnnapps.datasets.io import read_image, write_image

    paths = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        paths.append(str(write_image(tmp_path / f"{name}.png", getattr(data, name)()[:, :, :3])))
    (tmp_path / "bad.png").write_bytes(b"nope")
    patches, failed = top_patches(lite0, [*paths, str(tmp_path / "bad.png")], "C4", channel=5, k=3)
    assert len(patches) == 3 and len(failed) == 1
    acts = [p.activation for p in patches]
    assert acts == sorted(acts, reverse=True)
    backbone = lite0.backbone.eval()
    expected = {}
    for path in paths:
        x = torch.from_numpy(lite0.preprocess(read_image(path)))[None]
        with torch.no_grad():
            expected[path] = float(backbone.forward_stages(x)["C4"][0, 5].max())
    assert patches[0].source == max(expected, key=expected.get)
    assert patches[0].activation == pytest.approx(expected[patches[0].source], rel=1e-4)
    assert patches[0].image.shape == (96, 96, 3)


def test_grad_cam_is_drawn_over_the_whole_photo_where_the_crop_lies(lite0) -> None:
    from cnnapps.apps.classify.visualize import GradCam

    photo = np.full((360, 720, 3), 127, np.uint8)  # resized to 256 x 512; the 224 crop spans x 144..368 of it
    geometry = lite0.preprocess.geometry(360, 720)
    heat = np.zeros((224, 224), np.float32)
    heat[:, :112] = 1.0  # the left half of the view is hot
    overlay = GradCam(heat, photo[:224, :224], 0, "x", 0.5, photo, geometry).overlay()
    assert overlay.shape == photo.shape  # the photo's own frame, not the 224 px view
    sx = geometry[0]
    left_edge, middle, right_edge = (round((x + geometry[2]) / sx) for x in (0, 112, 224))  # in the photo: 126..392
    assert np.array_equal(overlay[60:, : left_edge - 3], photo[60:, : left_edge - 3])  # outside the crop: as it is
    assert np.array_equal(overlay[:, right_edge + 3 :], photo[:, right_edge + 3 :])
    hot, cold = overlay[180, (left_edge + middle) // 2], overlay[180, (middle + right_edge) // 2]
    assert hot[0] > hot[2] + 30 and cold[2] > cold[0] + 30  # jet: red where the view was hot, blue where cold


def test_grad_cam_label_outline_stays_under_its_text() -> None:
    from cnnapps.apps.classify.visualize import GradCam

    view = np.full((320, 320, 3), 127, np.uint8)
    picture = GradCam(np.zeros((320, 320), np.float32), view, 0, "tiger cat", 0.453).overlay(alpha=0.0)
    band = picture[:40].astype(int).sum(axis=2)
    text_columns = np.flatnonzero((band > 600).any(axis=0))
    outline_columns = np.flatnonzero((band < 150).any(axis=0))
    assert text_columns.size and outline_columns.size
    # the outline ends where the text ends (no ghost of the last letters to its right)
    assert outline_columns.max() <= text_columns.max() + 2


def _field_of_unit(backbone, stage: str, stride: int, y: int, x: int, size: tuple[int, int, int], pad: int):
    """The input span (top, left, bottom, right; view pixels) unit (y, x) of ``stage`` depends on, found on its own:
    the view is grown by ``pad`` strides on every side so the field fits, and the gradient of that unit (now
    ``(y + pad, x + pad)``) is non-zero on its field."""
    channels, height, width = size
    grow = pad * stride
    inputs = torch.randn(2, channels, height + 2 * grow, width + 2 * grow, generator=torch.Generator().manual_seed(1))
    inputs.requires_grad_(True)
    fmap = backbone.forward_stages(inputs)[stage]
    (grad,) = torch.autograd.grad(fmap[:, :, y + pad, x + pad].sum(), inputs)
    mass = grad.abs().sum(dim=(0, 1))
    rows, cols = torch.nonzero(mass.sum(dim=1)).flatten(), torch.nonzero(mass.sum(dim=0)).flatten()
    assert rows[0] > 0 and rows[-1] < mass.shape[0] - 1 and cols[0] > 0 and cols[-1] < mass.shape[1] - 1
    return int(rows[0]) - grow, int(cols[0]) - grow, int(rows[-1]) + 1 - grow, int(cols[-1]) + 1 - grow


def _strongest_unit(loaded, rgb, stage: str, channel: int) -> tuple[int, int]:
    with torch.no_grad():
        fmap = loaded.backbone.eval().forward_stages(torch.from_numpy(loaded.preprocess(rgb))[None])[stage]
    y, x = np.unravel_index(int(fmap[0, channel].argmax()), fmap.shape[2:])
    return int(y), int(x)


def test_patch_is_the_receptive_field_of_the_strongest_unit(lite0, tmp_path, chelsea) -> None:
    """EfficientNet-Lite0 downsamples by stride-2 convolutions in TensorFlow's SAME padding, which pads an even input
    after, not before: each of C3's three halvings moves its units one input step on, so unit y is centred on
    y * 8 + 7.5, neither (y + 0.5) * 8 (VGG's pools) nor y * 8 + 0.5 (padding k//2 on both sides). The patch is
    the field a gradient probe finds for that unit (67 px there), padding included."""
    import cv2

    from cnnapps.apps.classify.visualize import view_of_input
    from cnnapps.datasets.io import write_image

    path = str(write_image(tmp_path / "chelsea.png", chelsea))
    (patch,), _ = top_patches(lite0, [path], "C3", channel=3, k=1)
    y, x = _strongest_unit(lite0, chelsea, "C3", 3)
    top, left, bottom, right = _field_of_unit(lite0.backbone, "C3", 8, y, x, lite0.preprocess.input_size, pad=6)
    assert ((top + bottom) / 2, (left + right) / 2) == (y * 8 + 7.5, x * 8 + 7.5)
    view = view_of_input(lite0.preprocess, chelsea)
    mean = np.round(np.asarray(lite0.preprocess.mean) * 255).astype(np.uint8)
    padded = np.full((view.shape[0] + 200, view.shape[1] + 200, 3), mean, np.uint8)
    padded[100:-100, 100:-100] = view
    crop = padded[top + 100 : bottom + 100, left + 100 : right + 100]
    assert np.array_equal(patch.image, cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA))
    assert patch.box == (top, left, bottom, right)


def test_a_patch_too_big_for_the_view_stays_centred_on_the_field(lite0, tmp_path, chelsea) -> None:
    """C4's field (339 px) is more than the 224 px view: the patch is a smaller window, centred all the same."""
    from cnnapps.datasets.io import write_image

    path = str(write_image(tmp_path / "chelsea.png", chelsea))
    (patch,), _ = top_patches(lite0, [path], "C4", channel=5, k=1)
    y, x = _strongest_unit(lite0, chelsea, "C4", 5)
    top, left, bottom, right = _field_of_unit(lite0.backbone, "C4", 16, y, x, lite0.preprocess.input_size, pad=11)
    assert bottom - top == right - left == 339
    centre = ((top + bottom) / 2, (left + right) / 2)
    got = ((patch.box[0] + patch.box[2]) / 2, (patch.box[1] + patch.box[3]) / 2)
    assert abs(got[0] - centre[0]) <= 1 and abs(got[1] - centre[1]) <= 1
    assert 64 <= patch.box[2] - patch.box[0] <= 112 and 64 <= patch.box[3] - patch.box[1] <= 112


def test_vgg_patches_stay_centred_between_pooled_pixels(tmp_path, chelsea) -> None:
    """VGG halves by 2x2 max pools: unit y is centred on (y + 0.5) * stride, and C3's field is 30 px."""
    from types import SimpleNamespace

    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.backbones.registry import create_backbone
    from cnnapps.datasets.io import write_image

    torch.manual_seed(0)
    vgg = SimpleNamespace(backbone=create_backbone("vgg11", weights=None), preprocess=Preprocess((3, 64, 64), 64))
    path = str(write_image(tmp_path / "chelsea.png", chelsea))
    (patch,), _ = top_patches(vgg, [path], "C3", channel=0, k=1)
    y, x = _strongest_unit(vgg, chelsea, "C3", 0)
    top, left, bottom, right = _field_of_unit(vgg.backbone, "C3", 8, y, x, (3, 64, 64), pad=4)
    assert ((top + bottom) / 2, (left + right) / 2) == ((y + 0.5) * 8, (x + 0.5) * 8)
    assert patch.box == (top, left, bottom, right) and bottom - top == 30


def test_grad_cam_of_a_one_pixel_last_map_points_from_the_stage_before(chelsea) -> None:
    # LeNet-5's last map (C5) is 120 x 1 x 1: its Grad-CAM was 1.0 everywhere
    from pathlib import Path

    lenet = load_classifier(str(Path(__file__).parents[2] / "fixtures" / "model_files_v1" / "classify.safetensors"))
    found = grad_cam(lenet, chelsea)
    assert found.heatmap.max() == pytest.approx(1.0) and found.heatmap.min() < 0.9  # a place, not a flat field
    assert found.heatmap.shape == tuple(lenet.preprocess.input_size[1:])
