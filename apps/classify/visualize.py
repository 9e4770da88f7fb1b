"""Looking inside a classifier: Grad-CAM, first-layer filters, stage activations, top-9 patches.

Every function returns an RGB uint8 picture (numpy), ready for ``write_image``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from cnnapps.apps.classify.model import LoadedClassifier
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.datasets.io import read_image
from cnnapps.errors import CnnappsError, ImageError, did_you_mean


def _input(loaded: LoadedClassifier, rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(loaded.preprocess(rgb))[None]


def view_of_input(spec: Preprocess, rgb: np.ndarray) -> np.ndarray:
    """What the network sees (resized and cropped), as RGB uint8 for drawing on."""
    x = spec(rgb).transpose(1, 2, 0) * np.asarray(spec.std) + np.asarray(spec.mean)
    x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else np.ascontiguousarray(x)


def classifier_to_look_inside(model: str | os.PathLike | None) -> LoadedClassifier:
    """The network ``cnnapps visualize`` looks inside (``--model``): a classify model file, or a registry backbone
    with published weights (default: the bundled one). Another task's named model, a backbone with no weights to
    show and an exported graph are each a one-line error saying what to give ``--model`` instead."""
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.tasks import TASKS
    from cnnapps.backbones.registry import DEFAULT_BACKBONE, TIMM_PREFIX, get_spec
    from cnnapps.backbones.weights import status_of
    from cnnapps.bundle import is_bundle_path
    from cnnapps.exported import is_onnx_file

    spec = str(model or DEFAULT_BACKBONE)
    if is_onnx_file(spec):
        raise CnnappsError(f"--model {spec}: an exported ONNX graph has no layers to look inside; give the model "
                           "file it was exported from")  # fmt: skip
    if is_bundle_path(spec):
        return load_classifier(spec)
    for task in TASKS.values():
        if task.name != "classify" and spec in task.zoo_models():
            raise CnnappsError(f"--model {spec}: a {task.name} model, not a classifier; visualize looks inside "
                               "classifiers (a classify model file, or a backbone `cnnapps models` lists)")  # fmt: skip
    get_spec(spec)  # an unknown name: the registry's own error, with the closest names
    if not spec.startswith(TIMM_PREFIX) and status_of(spec).state == "none":
        raise CnnappsError(f"--model {spec}: no published weights, so nothing learned to look at; give --model a "
                           f"model file trained from it (`cnnapps train classify --backbone {spec}`)")  # fmt: skip
    return load_classifier(spec)


def resolve_class(loaded: LoadedClassifier, target: str | int | None) -> int | None:
    """A class given by name or index, checked against the model's classes.

    A string is a class name first: classes trained from folders are often named by numbers ('0', '1', '10',
    ... in text order), so ``"10"`` is the class named 10 wherever there is one. A string of digits that names no
    class is an index; an ``int`` is always an index."""
    if target is None:
        return None
    names = loaded.class_names
    if isinstance(target, int):
        if not 0 <= target < len(names):
            raise CnnappsError(f"--class {target}: not a class index of this model (0..{len(names) - 1})")
        return target
    text = str(target)
    if text in names:
        return names.index(text)
    if text.isascii() and text.isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise CnnappsError(f"--class {target}: not a class of this model, nor an index 0..{len(names) - 1}")
        return index
    # among a thousand class names, difflib's 0.6 finds a match for nearly any word ('bogus': mouse)
    raise CnnappsError(f"--class {target}: not a class of this model{did_you_mean(text, names, cutoff=0.75)}")


@dataclass
class GradCam:
    heatmap: np.ndarray  # (H, W) in [0, 1] over the network's input view
    view: np.ndarray  # the input view, RGB uint8
    class_index: int
    label: str
    score: float
    image: np.ndarray | None = None  # the whole photo, RGB uint8
    geometry: tuple[float, float, float, float] | None = None  # how the photo's pixels move into the view

    def overlay(self, alpha: float = 0.45, longest: int = 1024) -> np.ndarray:
        """The heatmap in colour over the whole photo (at most ``longest`` pixels on a side, at least 320), with
        the class and its probability written on top. Where the preprocessing cropped the photo, the map covers
        only what the network saw, framed by a thin line; the rest of the photo is left uncoloured."""
        if self.image is None or self.geometry is None:  # the view alone
            return _labelled(_blend(self.view, self.heatmap, np.ones(self.heatmap.shape, bool), alpha),
                             f"{self.label} {self.score:.1%}")  # fmt: skip
        height, width = self.image.shape[:2]
        scale = min(longest / max(height, width), max(1.0, 320 / min(height, width)))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        photo = cv2.resize(self.image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        heat, seen = heat_in_photo(self.heatmap, self.geometry, photo.shape[0], photo.shape[1], scale)
        out = _blend(photo, heat, seen, alpha)
        if not seen.all():
            ys, xs = np.nonzero(seen)
            if len(xs):
                cv2.rectangle(out, (int(xs.min()), int(ys.min())), (int(xs.max()), int(ys.max())), (255, 255, 255), 1)
        return _labelled(out, f"{self.label} {self.score:.1%}")


def heat_in_photo(
    heatmap: np.ndarray, geometry: tuple[float, float, float, float], height: int, width: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The view's heatmap moved into the frame of the photo (drawn ``scale`` times its size, ``height`` x
    ``width``), and which of its pixels the view covers: ``geometry`` is :meth:`Preprocess.geometry`'s
    ``(sx, sy, ox, oy)`` with view coordinates ``x * sx - ox``, ``y * sy - oy`` (corners at 0)."""
    sx, sy, ox, oy = geometry
    u = (np.arange(width, dtype=np.float32) + 0.5) / scale * sx - ox  # each pixel centre, in view coordinates
    v = (np.arange(height, dtype=np.float32) + 0.5) / scale * sy - oy
    map_x, map_y = np.meshgrid(u - 0.5, v - 0.5)  # view pixel indices (pixel centres at .5)
    heat = cv2.remap(heatmap.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    view_h, view_w = heatmap.shape
    seen = ((u >= 0) & (u <= view_w))[None, :] & ((v >= 0) & (v <= view_h))[:, None]
    return heat, seen


def _blend(rgb: np.ndarray, heat: np.ndarray, where: np.ndarray, alpha: float) -> np.ndarray:
    """``heat`` in the jet colours over ``rgb`` where ``where`` holds; ``rgb`` as it is elsewhere."""
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    blended = (rgb * (1 - alpha) + colour * alpha).astype(np.uint8)
    return np.where(where[..., None], blended, rgb).astype(np.uint8)


def _labelled(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` (at least 320 pixels on a side) with ``text`` in white on a black outline at its top left.

    The outline is the same thin text drawn around the white one: OpenCV spaces letters by their thickness, so
    a thicker shadow would drift to the right of the text (a ghost "%" after it)."""
    out = np.ascontiguousarray(rgb)
    if min(out.shape[:2]) < 320:
        out = cv2.resize(out, (max(out.shape[1], 320), max(out.shape[0], 320)), interpolation=cv2.INTER_LINEAR)
    font_scale = 0.7 * max(1.0, min(out.shape[:2]) / 480)
    org = (8, round(24 * font_scale / 0.7))
    for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
        cv2.putText(out, text, (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grad_cam(loaded: LoadedClassifier, rgb: np.ndarray, target: str | int | None = None) -> GradCam:
    """Grad-CAM (Selvaraju et al. 2017) on the last feature map: channel weights are the mean gradients
    of the class score; the map is the ReLU of the weighted channel sum, upsampled to the input (``overlay`` draws it
    over the whole photo). A last map of one pixel (LeNet-5's C5) says nothing of where: the deepest stage with more
    than one pixel is taken instead (its map came out flat, 1.0 everywhere)."""
    model = loaded.model.eval()
    x = _input(loaded, rgb)
    with torch.enable_grad():
        features = model.forward_features(x).detach().requires_grad_(True)
        mapped = features
        if features.shape[-1] * features.shape[-2] == 1:
            stages, features = model.backbone.forward_shared(x)
            wider = [m for m in stages.values() if m.shape[-1] * m.shape[-2] > 1]
            if not wider:
                raise CnnappsError(f"{loaded.name}: every feature map is one pixel at this input size: Grad-CAM has "
                                   "nowhere to point")  # fmt: skip
            mapped = wider[-1]
            mapped.retain_grad()
        logits = model.forward_head(features)
        index = resolve_class(loaded, target)
        index = int(logits.argmax()) if index is None else index
        logits[0, index].backward()
    if mapped.grad is None:
        raise CnnappsError(f"{loaded.name}: its last feature map is one pixel, and no earlier stage leads to it here")
    features = mapped.detach()
    weights = mapped.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1))[0].detach().numpy()
    cam = cv2.resize(cam, (x.shape[3], x.shape[2]), interpolation=cv2.INTER_LINEAR)
    cam = cam / cam.max() if cam.max() > 0 else cam
    # a multi-label class's own probability (sigmoid); one class among all: softmax
    scores = torch.sigmoid(logits.detach()) if loaded.multilabel else torch.softmax(logits.detach(), dim=1)
    score = float(scores[0, index])
    view = view_of_input(loaded.preprocess, rgb)
    geometry = loaded.preprocess.geometry(rgb.shape[0], rgb.shape[1])
    return GradCam(cam.astype(np.float32), view, index, loaded.class_names[index], score, rgb, geometry)


def tile(images: Sequence[np.ndarray], columns: int | None = None, gap: int = 2, background: int = 255) -> np.ndarray:
    """Lay equal-sized RGB tiles out in a grid."""
    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    h, w = images[0].shape[:2]
    grid = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), background, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = img
    return grid


def first_layer_filters(model: nn.Module, tile_size: int = 48) -> np.ndarray:
    """The first convolution's filters as a grid (each scaled to its own range); grey for 1-channel input."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise CnnappsError("the model has no convolution")
    weights = conv.weight.detach().float().cpu().numpy()  # (out, in, k, k)
    tiles = []
    for w in weights:
        w = w[:3] if w.shape[0] >= 3 else np.repeat(w[:1], 3, axis=0)
        w = (w - w.min()) / (w.max() - w.min() + 1e-12)
        img = (w.transpose(1, 2, 0) * 255).astype(np.uint8)
        tiles.append(cv2.resize(img, (tile_size, tile_size), interpolation=cv2.INTER_NEAREST))
    return tile(tiles)


def activation_maps(loaded: LoadedClassifier, rgb: np.ndarray, stage: str | None = None, limit: int = 64) -> np.ndarray:
    """The first ``limit`` channels of a stage's output for one image, each normalised, as a grid."""
    backbone = loaded.backbone.eval()
    names = [s.name for s in backbone.stages]
    stage = stage or names[len(names) // 2]
    if stage not in names:
        raise CnnappsError(f"--layer {stage}: {backbone.name} has stages {', '.join(names)}")
    with torch.no_grad():
        fmap = backbone.forward_stages(_input(loaded, rgb))[stage][0].numpy()
    tiles = []
    size = max(48, min(96, fmap.shape[1] * 4))
    for channel in fmap[:limit]:
        c = (channel - channel.min()) / (channel.max() - channel.min() + 1e-12)
        img = cv2.applyColorMap((c * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[:, :, ::-1]
        tiles.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST))
    return tile(tiles)


@dataclass(frozen=True)
class ReceptiveField:
    """Where the units of one stage look in the network's input, measured on the network itself.

    Unit ``(y, x)`` of the stage is centred on view coordinate ``(y * stride[0] + offset[0], x * stride[1] +
    offset[1])`` (pixel corners at whole numbers, so pixel ``i`` spans ``i..i+1``). ``size`` is the theoretical field's
    (rows, columns): every input pixel the unit depends on; ``None`` on an axis where the field outgrew the
    largest probe (a global context such as squeeze-and-excitation). ``effective`` is the centred window holding
    90% of the unit's input-gradient mass along each axis (the effective receptive field, Luo et al. 2016)."""

    stride: tuple[int, int]  # (rows, columns) the units step by
    offset: tuple[float, float]
    size: tuple[int | None, int | None]
    effective: tuple[int, int]

    def centre(self, y: int, x: int) -> tuple[float, float]:
        return y * self.stride[0] + self.offset[0], x * self.stride[1] + self.offset[1]

    def window(self, view_h: int, view_w: int) -> int:
        """The side of the square patch shown for a unit in a ``view_h`` x ``view_w`` view (Zeiler & Fergus: the
        receptive field). Where the field is more than half the view's shorter side, the effective field instead,
        at most half the view."""
        half = max(1, min(view_h, view_w) // 2)
        sides = [self.size[a] if self.size[a] is not None and self.size[a] <= half else min(self.effective[a], half)
                 for a in (0, 1)]  # fmt: skip
        return max(sides)

    def box(self, y: int, x: int, view_h: int, view_w: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit ``(y, x)``'s patch in view pixels, centred on the unit's field;
        it may reach past the view's edges (the network's padding)."""
        side = self.window(view_h, view_w)
        out = []
        for c in self.centre(y, x):
            # a side of the centre's parity (odd about a pixel's centre, even about a corner) centres it exactly
            s = side if (round(2 * c) - side) % 2 == 0 else side - 1 if side > 1 else side + 1
            out.append((round(c - s / 2), round(c - s / 2) + s))
        (top, bottom), (left, right) = out
        return top, left, bottom, right


_FIELDS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ReceptiveField]] = weakref.WeakKeyDictionary()
_ERF_MASS = 0.9
_PROBE_GROWTH = 8  # a probe grows up to this many times the input's side before a field counts as unbounded


def receptive_field(backbone: nn.Module, stage: str, input_size: tuple[int, int, int] | None = None) -> ReceptiveField:
    """Measure ``stage``'s receptive field by a gradient probe (cached per backbone and stage).

    The backward pass of the channel sum of the map's central unit, on seeded random inputs of ``input_size``
    (C, H, W; the backbone's own by default), is non-zero exactly on the input pixels that unit depends on: the
    span's midpoint less ``unit * stride`` is the centre offset, its length the field's size. Where the span
    reaches an edge of the input, that axis is probed again on a longer input (whole strides longer, so padding
    falls as it does on the real input) until the field fits, up to ``_PROBE_GROWTH`` times the input's side; how
    much longer the map got there gives the stride the units really step by."""
    cache = _FIELDS.setdefault(backbone, {})
    channels, height, width = input_size or backbone.preprocess.input_size
    key = (stage, channels, height, width)
    if key not in cache:
        declared = {s.name: s for s in backbone.stages}[stage].stride
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        axes = []
        first_probe = _probe(backbone, stage, (channels, height, width), device, dtype)
        for axis, side in ((0, height), (1, width)):
            profile, unit, units = first_probe[axis]
            length, stride = side, declared
            if not profile.any():  # no gradient at all (every path dead on the probes): the old guess, four strides
                axes.append((stride, stride / 2, None, 4 * stride))
                continue
            while True:
                nz = np.flatnonzero(profile)
                bounded = nz[0] > 0 and nz[-1] < length - 1
                if bounded or length >= _PROBE_GROWTH * side:
                    break
                longer = length + math.ceil(length / declared) * declared
                shape = [channels, height, width]
                shape[1 + axis] = longer
                try:
                    profile, unit, more = _probe(backbone, stage, tuple(shape), device, dtype)[axis]
                except RuntimeError:  # a net that takes one input size only: keep what the real size showed
                    break
                length = longer
                if more > units and (length - side) % (more - units) == 0:
                    stride = (length - side) // (more - units)
            if bounded:
                first, last = int(nz[0]), int(nz[-1])
            else:  # a global context reaches every pixel: the span where the gradient is not negligible
                strong = np.flatnonzero(profile >= 1e-3 * profile.max())
                first, last = int(strong[0]), int(strong[-1])
            centre = (first + last + 1) / 2
            axes.append((stride, centre - unit * stride, last - first + 1 if bounded else None, _erf(profile, centre)))
        rows, cols = axes
        cache[key] = ReceptiveField((rows[0], cols[0]), (rows[1], cols[1]), (rows[2], cols[2]), (rows[3], cols[3]))
    return cache[key]


def _probe(
    backbone: nn.Module, stage: str, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> list[tuple[np.ndarray, int, int]]:
    """For rows and columns: the input gradient's absolute mass along that axis of the central unit of ``stage``'s
    map, that unit's index along the axis and the map's length along it."""
    generator = torch.Generator().manual_seed(0)
    # a max pool passes the gradient to one pixel of its window: two inputs, so that every pixel gets some
    x = torch.randn(2, *shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
    with torch.enable_grad():
        fmap = backbone.forward_stages(x)[stage]
        h, w = fmap.shape[2:]
        (grad,) = torch.autograd.grad(fmap[:, :, h // 2, w // 2].sum(), x)
    mass = grad.detach().abs().sum(dim=(0, 1)).double().cpu().numpy()
    return [(mass.sum(axis=1), h // 2, h), (mass.sum(axis=0), w // 2, w)]


def _erf(profile: np.ndarray, centre: float) -> int:
    """The side of the window centred on ``centre`` holding ``_ERF_MASS`` of ``profile``'s mass."""
    distance = np.abs(np.arange(len(profile)) + 0.5 - centre)  # from each pixel's centre
    order = np.argsort(distance, kind="stable")
    held = np.cumsum(profile[order])
    reach = distance[order][int(np.searchsorted(held, _ERF_MASS * held[-1]))]
    return math.ceil(2 * reach + 1 - 1e-9)


@dataclass
class Patch:
    source: str
    activation: float
    image: np.ndarray  # RGB uint8, 96 x 96: the input region around the strongest response
    box: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) of that region in the view's pixels


def top_patches(
    loaded: LoadedClassifier, paths: Sequence[str], stage: str, channel: int, k: int = 9
) -> tuple[list[Patch], list[str]]:
    """The ``k`` image patches that excite one channel of one stage most (Zeiler & Fergus 2014).

    Each image contributes its strongest position; the patch is the input region that unit sees, centred on its
    receptive field as :func:`receptive_field` measures it on the network: the whole field, or where that is more
    than half the input, the window holding 90% of its gradient (the effective field), at most half the input.
    Past the input's edges the patch shows the mean colour (what the network's zero padding is). Returns the
    patches (strongest first) and the inputs that could not be read.
    """
    backbone = loaded.backbone.eval()
    info = {s.name: s for s in backbone.stages}
    if stage not in info:
        raise CnnappsError(f"--layer {stage}: {backbone.name} has stages {', '.join(info)}")
    if not 0 <= channel < info[stage].channels:
        raise CnnappsError(f"--channel {channel}: stage {stage} has channels 0..{info[stage].channels - 1}")
    field = None
    padding = np.clip(np.round(np.asarray(loaded.preprocess.mean, np.float64) * 255), 0, 255).astype(np.uint8)
    found, failed = [], []
    for path in paths:
        try:
            rgb = read_image(path)
        except ImageError as exc:
            failed.append(str(exc))
            continue
        with torch.no_grad():
            fmap = backbone.forward_stages(_input(loaded, rgb))[stage][0, channel].numpy()
        y, x = np.unravel_index(int(fmap.argmax()), fmap.shape)
        field = field or receptive_field(backbone, stage, loaded.preprocess.input_size)
        view = view_of_input(loaded.preprocess, rgb)
        height, width = view.shape[:2]
        top, left, bottom, right = field.box(int(y), int(x), height, width)
        crop = np.empty((bottom - top, right - left, 3), np.uint8)
        crop[:] = padding if padding.size == 3 else padding[0]
        y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
        if y0 < y1 and x0 < x1:
            crop[y0 - top : y1 - top, x0 - left : x1 - left] = view[y0:y1, x0:x1]
        image = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA)
        found.append(Patch(str(path), float(fmap.max()), image, (top, left, bottom, right)))
    found.sort(key=lambda p: -p.activation)
    return found[:k], failed
