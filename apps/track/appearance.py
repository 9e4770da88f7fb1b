"""A learned appearance for tracking: a linear map of a detector's own box embeddings fitted to object identities.

A detector's RoI embedding (:func:`cnnapps.apps.detect.model.box_embeddings`) is trained for classes and boxes,
not for telling two objects of one class apart: views of one object move with its position in the box, partial
cover and turning, and in cosine distance these changes rival the differences between objects. Where training
annotations say which object each box is (COCO ``track_id``, with ``video_id`` on the images when the file holds
several videos, as video datasets such as TAO and the synthetic tracking frames write them), a linear discriminant
analysis of the embeddings of those boxes finds the directions along which objects differ more than views of one
object do: ``unit((e - mean) @ matrix)``, with ``matrix`` the principal directions of the embeddings (at most
``PCA_DIMS``) followed by the discriminant directions (at most ``components``), scaled so that views of one object
spread alike in each (within-identity whitening). Closed form (no training loop, a few seconds), on the boxes of
the annotations themselves, from one pass of the detector over the images.

The result lives in the detector's model file (``DetectorSpec.appearance`` and the ``appearance`` buffers), so
``cnnapps detect VIDEO --track`` and ``cnnapps eval track --model`` use it without an option; the tracker's
settings (appearance threshold and gate) stay as they are.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.apps.track.tracker import _unit
from cnnapps.errors import CnnappsError

log = logging.getLogger(__name__)

#: principal directions kept before the discriminant analysis (the RoI embedding has 3,136 numbers; identities a
#: few hundred at most)
PCA_DIMS = 256
#: numbers in a learned appearance: 32, chosen over 16-128 on the validation videos of benchmarks/tracking.py
#: (seeds 3-11; mean IDF1 0.91 at 32, 0.88 at 16 and 64, 0.85 at 128, the last three at shrinkage 0.1, where 32
#: gave 0.90), with the tracker's own settings
COMPONENTS = 32
#: weight of the identity matrix in the within-identity covariance (as a share of its mean variance): keeps the
#: directions a few hundred boxes cannot measure from being blown up. 0.3, chosen over 0.1-1 on the same videos
SHRINKAGE = 0.3
#: fewest boxes an identity needs to take part in the fit (one view says nothing about how views vary)
MIN_VIEWS = 2


class AppearanceError(CnnappsError):
    """Data or a model that a learned appearance cannot be fitted with."""


def fit_projection(
    embeddings: np.ndarray, identities: np.ndarray, components: int = COMPONENTS, shrinkage: float = SHRINKAGE
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, matrix)`` of the learned appearance for ``embeddings`` (N, D) of boxes whose objects are
    ``identities`` (N,) (any hashable labels): principal directions, then the generalised eigenvectors of the
    between-identity covariance against the (shrunk) within-identity one, each scaled to unit within-identity
    variance. Identities with fewer than :data:`MIN_VIEWS` boxes are left out; at least two must remain."""
    from scipy.linalg import eigh

    x = _unit(np.asarray(embeddings, dtype=np.float64))
    labels = np.asarray(identities)
    if x.ndim != 2 or len(x) != len(labels):
        raise AppearanceError(f"embeddings {x.shape} and identities ({len(labels)},) do not match")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= MIN_VIEWS
    x, inverse = x[keep], inverse[keep]
    present = np.unique(inverse)
    if len(present) < 2:
        raise AppearanceError(f"{len(present)} identities with {MIN_VIEWS} or more boxes: need at least 2")
    if components < 1:
        raise AppearanceError(f"components: must be >= 1, got {components}")
    mean = x.mean(0)
    centred = x - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    principal = vt[: min(PCA_DIMS, len(vt))].T  # D x P
    z = centred @ principal
    dims = z.shape[1]
    within = np.zeros((dims, dims))
    between = np.zeros((dims, dims))
    for ident in present:
        views = z[inverse == ident]
        centre = views.mean(0)
        within += (views - centre).T @ (views - centre)
        between += len(views) * np.outer(centre, centre)
    within /= len(z)
    between /= len(z)
    within += shrinkage * np.trace(within) / dims * np.eye(dims)
    values, vectors = eigh(between, within)  # vectors^T within vectors = I: unit within-identity variance
    keep_dims = min(components, len(present) - 1, dims)
    if keep_dims < components:  # said, not silent: the appearance is smaller than asked
        from cnnapps.terminal import plural

        log.warning("learned appearance of %s, not the %d asked: %s", plural(keep_dims, "number"), components,
                    _fewer_directions(len(present), dims, x.shape))  # fmt: skip
    discriminant = vectors[:, np.argsort(values)[::-1][:keep_dims]]
    return mean.astype(np.float32), (principal @ discriminant).astype(np.float32)


def _fewer_directions(identities: int, dims: int, shape: tuple[int, ...]) -> str:
    """Why a fit has only ``min(identities - 1, dims)`` directions (``dims``: the principal ones of (N, D) boxes)."""
    from cnnapps.terminal import plural

    if identities - 1 <= dims:
        return (f"{identities} identities with {MIN_VIEWS} or more boxes are told apart along at most "
                f"{plural(identities - 1, 'direction')} (one fewer than the identities)")  # fmt: skip
    if dims == shape[1]:
        return f"the embedding has {plural(dims, 'number')}"
    if dims == PCA_DIMS:
        return f"the fit keeps at most {PCA_DIMS} principal directions"
    return f"{plural(shape[0], 'box')} span at most {plural(dims, 'direction')}"


@dataclass
class Identities:
    """Boxes whose objects are known, from a COCO file (``path``): its images by id, and for each image id its
    boxes (x0, y0, x1, y1 pixels) with their identity ``(video_id, track_id)``."""

    path: Path
    images: dict[int, dict[str, Any]]
    boxes: dict[int, list[tuple[Any, list[float]]]]


def identity_boxes(data: str | os.PathLike) -> Identities:
    """The :class:`Identities` of a COCO file; annotations without ``track_id``, crowds and empty boxes are left
    out, and a file with none left is a one-line error. Images without ``video_id`` that look like frames of several
    videos (:func:`several_videos`) are warned of in one line: their track ids would be taken as one video's."""
    from cnnapps.datasets.coco import read_annotation_file

    path = Path(data)
    coco = read_annotation_file(path, AppearanceError)
    images = {int(i["id"]): i for i in coco["images"] if isinstance(i, dict) and "id" in i and "file_name" in i}
    boxes: dict[int, list[tuple[Any, list]]] = {}
    categories: dict[Any, set[Any]] = {}  # of each track_id on images without a video_id
    for ann in coco.get("annotations", []):
        image = images.get(ann.get("image_id"))
        if image is None or ann.get("track_id") is None or ann.get("iscrowd"):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        identity = (image.get("video_id"), ann["track_id"])
        boxes.setdefault(int(image["id"]), []).append((identity, [x, y, x + w, y + h]))
        if image.get("video_id") is None:
            categories.setdefault(ann["track_id"], set()).add(ann.get("category_id"))
    if not boxes:
        raise AppearanceError(f"{path}: no annotation has a track_id (which object of its video a box is); "
                              "a learned appearance needs them")  # fmt: skip
    unnamed = [images[i] for i in boxes if images[i].get("video_id") is None]
    evidence = several_videos(unnamed, categories)
    if evidence is not None:
        from cnnapps.terminal import plural

        log.warning("%s: %s without a video_id look like frames of several videos (%s): objects of different videos "
                    "with one track_id are then merged into one identity; an image's video_id tells them apart", path,
                    plural(len(unnamed), "image"), evidence)  # fmt: skip
    return Identities(path, images, boxes)


#: image keys other than video_id that name an image's video (the synthetic tracking frames carry video_seed)
VIDEO_KEYS = ("video_seed",)


def several_videos(images: list[dict[str, Any]], categories: dict[Any, set[Any]]) -> str | None:
    """Why ``images`` (without a video_id) look like frames of several videos, or None where nothing says so: a
    track_id with boxes of several categories (one object keeps its category), several values of a key of
    :data:`VIDEO_KEYS`, or numbered file names of several sequences (the folder and the name before the number)."""
    import re

    mixed = next(((track, sorted(map(str, found))) for track, found in categories.items() if len(found) > 1), None)
    if mixed is not None:
        return f"track_id {mixed[0]} has boxes of categories {', '.join(mixed[1])}"
    for key in VIDEO_KEYS:
        values = {str(image[key]) for image in images if image.get(key) is not None}
        if len(values) > 1:
            return f"{len(values)} values of {key}"
    names = [re.fullmatch(r"(.*?)\d+", os.path.splitext(str(image["file_name"]))[0]) for image in images]
    if names and all(names):  # every name numbered, as frames are
        sequences = sorted({f"{found.group(1)}*" for found in names if found is not None})
        if len(sequences) > 1:
            return f"file names of {len(sequences)} sequences, such as {sequences[0]} and {sequences[1]}"
    return None


def box_views(model: Any, images: list[Any], boxes: list[list[list[float]]]) -> list[np.ndarray]:
    """The raw appearance (:func:`~cnnapps.apps.detect.model.box_embeddings`, no learned projection) of the given
    boxes (pixels of each image) in float (3, H, W) images in [0, 1], from one pass of the detector's trunk."""
    import torch

    from cnnapps.apps.detect.model import box_embeddings

    device = next(model.parameters()).device
    tensors = [img.to(device) for img in images]
    targets = [{"boxes": torch.tensor(b, dtype=torch.float32, device=device).reshape(-1, 4)} for b in boxes]
    with torch.inference_mode():
        batch, scaled = model.transform(tensors, targets)
        features = model.backbone(batch.tensors)
        vectors = box_embeddings(model, features, [t["boxes"] for t in scaled], batch.image_sizes)
    return [v.float().cpu().numpy() for v in vectors]


def train_appearance(
    model_path: str | os.PathLike,
    annotated: Identities,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    components: int = COMPONENTS,
    device: str = "auto",
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fit the learned appearance of the detector in ``model_path`` on the boxes of ``annotated``
    (:func:`identity_boxes`; images in ``images``) and write the detector with it to ``out`` (never over an
    existing file). ``progress(n)`` is called as images are done. Returns what was fitted: identities and boxes
    (those the fit learned from), images used and skipped, components, and the output path."""
    import torch

    from cnnapps.apps.detect.model import AppearanceProjection, load_detector
    from cnnapps.apps.modelfile import read_model_file, save_model
    from cnnapps.bundle import is_bundle_path
    from cnnapps.datasets.io import read_image
    from cnnapps.runtime import select_device

    out = Path(out)
    if os.path.lexists(out):
        raise AppearanceError(f"{out}: already exists; choose another --out")
    if not is_bundle_path(model_path):
        raise AppearanceError(f"{model_path}: not a model file (a learned appearance is kept in the detector's file)")
    model_file = read_model_file(model_path)
    if len(model_file.heads) != 1:
        raise AppearanceError(f"{model_path}: has {len(model_file.heads)} heads; give a file with the detector alone")
    model = load_detector(model_path)
    if model.spec.shared:
        raise AppearanceError(f"{model_path}: a head on a shared trunk; train track takes a detector of its own")
    spec = copy.deepcopy(model.spec)
    model.appearance = None  # fit on the raw embeddings, also when the file has a learned appearance already
    model = model.to(select_device(device)).eval()
    folder = Path(images)
    records, boxes = annotated.images, annotated.boxes
    order = sorted(boxes)
    vectors, identities, skipped = [], [], []
    for start in range(0, len(order), batch_size):
        chunk, pixels = [], []
        for image_id in order[start : start + batch_size]:
            name = records[image_id]["file_name"]
            try:
                rgb = read_image(folder / name)
            except CnnappsError as exc:
                log.warning("%s: skipped (%s)", folder / name, exc)
                skipped.append(str(folder / name))
                continue
            chunk.append(image_id)
            pixels.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255)
        if chunk:
            found = box_views(model, pixels, [[b for _, b in boxes[i]] for i in chunk])
            for image_id, views in zip(chunk, found, strict=True):
                vectors.append(views)
                identities.extend(repr(ident) for ident, _ in boxes[image_id])
        if progress is not None:
            progress(len(order[start : start + batch_size]))
    if not vectors:
        raise AppearanceError(f"{folder}: none of the {len(order)} annotated images could be read")
    embeddings = np.concatenate(vectors)
    mean, matrix = fit_projection(embeddings, np.array(identities), components)
    views = Counter(identities)
    used = [n for n in views.values() if n >= MIN_VIEWS]  # the objects the fit learned from, and their boxes
    spec.appearance = {"dims": int(matrix.shape[0]), "components": int(matrix.shape[1]), "identities": len(used),
                       "boxes": sum(used), "data": str(annotated.path)}  # fmt: skip
    model.spec = spec
    model.appearance = AppearanceProjection(*matrix.shape)
    model.appearance.mean.copy_(torch.from_numpy(mean))
    model.appearance.matrix.copy_(torch.from_numpy(matrix))
    head_name, head = next(iter(model_file.heads.items()))
    save_model(out, spec.task, model.cpu(), model_file.trunk["name"], model_file.trunk.get("kwargs"),
               model_file.preprocess, head.metrics, head_name=head_name, overwrite=False)  # fmt: skip
    return {"out": str(out), "identities": spec.appearance["identities"], "boxes": spec.appearance["boxes"],
            "components": spec.appearance["components"], "components_asked": components,
            "images": len(order) - len(skipped), "skipped": skipped}  # fmt: skip
