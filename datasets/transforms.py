"""albumentations presets for training; evaluation uses the model's own :class:`Preprocess`.

Every preset ends at the backbone's input size and normalisation, so a preset can be
swapped without touching the model. Training-only: the inference path never imports this.

Two ways to run a preset. ``output="float32"`` (training on a CPU): all of it in the DataLoader workers,
normalised float32 out. ``output="uint8"`` (training on a GPU): the workers decode and do the geometric steps
(and what only albumentations does, such as FancyPCA) on uint8 images; colour jitter and normalisation run on
the whole batch on the GPU (:func:`batch_transform`, :mod:`cnnapps.datasets.device_transforms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.errors import CnnappsError

PRESETS = {
    "default": "random resized crop (35-100% of the area), horizontal flip, light colour jitter",
    "alexnet": "AlexNet recipe: shorter side to 256, random 224 crops, horizontal flips, PCA colour noise",
    "creative": "geometric 'get creative': translation, rotation, stretch, shear, lens distortion (no flips)",
    "randaugment": "random resized crop, horizontal flip, then torchvision's RandAugment (2 ops of magnitude 9)",
    "trivialaugment": "random resized crop, horizontal flip, then torchvision's TrivialAugmentWide (1 op)",
    "none": "no augmentation: the evaluation preprocessing",
}


OUTPUTS = ("float32", "uint8")


def seed_augmentation(transform: Any, seed: int) -> None:
    """Seed the albumentations pipeline of a training transform (a no-op for one without) from ``seed`` and this
    process's rank in a distributed run (:func:`process_rank`). albumentations draws from a random state of its
    own that global seeds do not reach: unseeded, two runs with the same ``--seed`` augment differently, and every
    DataLoader worker (a copy of the same pipeline) repeats the same draws."""
    pipeline = getattr(transform, "pipeline", None)
    if pipeline is not None:
        pipeline.set_random_seed((int(seed) + 1_000_003 * process_rank()) % 2**32)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker's augmentation seeded from torch's seed for it (a base seed drawn
    from the seeded main process, plus the worker's id) and the process's rank in a distributed run: the same
    draws under the same ``--seed``, other draws in each worker of each process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    seed_augmentation(getattr(info.dataset, "transform", None), info.seed)


def slurm_launched() -> bool:
    """Whether SLURM's ``srun`` started this process as one task of a run, as Lightning tells (an interactive
    allocation's shell is not such a task)."""
    import os

    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def process_rank() -> int:
    """A number of its own for each process of a distributed run (0 outside one): the global rank once the process
    group is up, before that what the launcher set (torchrun's RANK, srun's SLURM_PROCID; Lightning's NODE_RANK and
    LOCAL_RANK)."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if slurm_launched():
        return int(os.environ.get("SLURM_PROCID", 0))
    return int(os.environ.get("NODE_RANK", 0)) * 1024 + int(os.environ.get("LOCAL_RANK", 0))


def train_transform(preset: str, spec: Preprocess, output: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 (H, W, 3) -> float32 (C, H, W) with random augmentation from ``preset``; with ``output="uint8"``,
    uint8 (C, H, W) from the preset's steps but its colour jitter and normalisation (see :func:`batch_transform`)."""
    if preset not in PRESETS:
        raise CnnappsError(f"--augment {preset}: unknown preset; choose from {', '.join(PRESETS)}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    uint8 = output == "uint8"
    if preset == "none":
        return eval_transform(spec, output)
    import albumentations as A
    import cv2

    channels, height, width = spec.input_size
    colour = channels == 3
    if spec.resize_mode == "squash":
        fit = [A.Resize(height, width)]
    else:
        fit = [A.SmallestMaxSize(max_size=spec.resize), A.CenterCrop(height, width)]

    policy = _policy(preset)  # RandAugment / TrivialAugmentWide: on the uint8 image, after the steps below
    if policy is not None:
        steps = [A.RandomResizedCrop(size=(height, width), scale=(0.35, 1.0)), A.HorizontalFlip(p=0.5)]
    elif preset == "default":
        jitter = colour and not uint8
        steps = [
            A.RandomResizedCrop(size=(height, width), scale=(0.35, 1.0)),
            A.HorizontalFlip(p=0.5),
            # with uint8 output the same jitter runs on the batch, on the GPU (device_transforms.ColorJitter)
            *([A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)] if jitter else []),
        ]
    elif preset == "alexnet":
        resize = (
            [A.Resize(spec.resize, spec.resize)]
            if spec.resize_mode == "squash"
            else [A.SmallestMaxSize(max_size=spec.resize)]
        )
        steps = [
            *resize,
            A.RandomCrop(height, width),
            A.HorizontalFlip(p=0.5),
            *([A.FancyPCA(alpha=0.1, p=1.0)] if colour else []),
        ]
    else:  # creative
        steps = [
            *fit,
            A.Affine(
                translate_percent={"x": (-0.1, 0.1), "y": (-0.1, 0.1)},
                rotate=(-15, 15),
                scale={"x": (0.85, 1.15), "y": (0.85, 1.15)},
                shear={"x": (-10, 10), "y": (-10, 10)},
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.9,
            ),
            A.OpticalDistortion(distort_limit=0.15, p=0.5),
        ]
    normalise = [] if uint8 else [A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0)]
    pipeline = A.Compose([*steps, *normalise] if policy is None else steps)
    if policy is not None:
        import torch

        mean = np.asarray(spec.mean, np.float32)[:, None, None] * 255.0
        std = np.asarray(spec.std, np.float32)[:, None, None] * 255.0

    def apply(rgb: np.ndarray) -> np.ndarray:
        img = rgb if colour else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        out = pipeline(image=img)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        if policy is not None:  # torchvision's policies take uint8 (C, H, W) tensors (torch's RNG, seeded per worker)
            chw = policy(torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))).numpy()
            return chw if uint8 else np.ascontiguousarray((chw.astype(np.float32) - mean) / std)
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.uint8 if uint8 else np.float32)

    apply.pipeline = pipeline  # type: ignore[attr-defined]  # for seeding (pipeline.set_random_seed)
    apply.policy = policy  # type: ignore[attr-defined]  # torchvision's policy draws from torch's global RNG
    return apply


def _policy(preset: str) -> Any:
    """torchvision's automatic augmentation policy of ``preset``, or None for the albumentations presets."""
    if preset not in ("randaugment", "trivialaugment"):
        return None
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=2, magnitude=9) if preset == "randaugment" else v2.TrivialAugmentWide()


def eval_transform(spec: Preprocess, output: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """The model's own preprocessing: ``spec`` itself (float32), or its resize and crop alone (uint8, to be
    normalised by :func:`batch_transform`; together they give exactly ``spec``'s tensor)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    return spec if output == "float32" else ResizeCrop(spec)


class ResizeCrop:
    """RGB uint8 (H, W, 3) -> uint8 (C, H, W): :meth:`Preprocess.apply_tensor`'s steps up to its normalisation,
    the same torchvision functions in the same order."""

    def __init__(self, spec: Preprocess) -> None:
        self.spec = spec

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        spec = self.spec
        channels, height, width = spec.input_size
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        mode = InterpolationMode(spec.interpolation)
        if spec.resize_mode == "squash":
            img = F.resize(img, [height, width], interpolation=mode, antialias=True)
        else:
            img = F.center_crop(F.resize(img, spec.resize, interpolation=mode, antialias=True), [height, width])
        if channels == 1:
            img = F.rgb_to_grayscale(img)
        return img.contiguous().numpy()


def batch_transform(preset: str, spec: Preprocess, channels_last: bool = False) -> Any:
    """What runs on the training device after ``train_transform(preset, spec, output="uint8")`` (and, for
    validation batches, after :func:`eval_transform`): the preset's colour jitter on training batches, then
    ``spec``'s normalisation; a :class:`~cnnapps.datasets.device_transforms.BatchTransform`."""
    from cnnapps.datasets.device_transforms import BatchTransform, ColorJitter

    return BatchTransform(spec, ColorJitter() if preset == "default" else None, channels_last)


DETECTION_PRESETS = {
    "default": "horizontal flip (left/right keypoints swapped), scale 0.75-1.25 and shift, colour jitter",
    "none": "no augmentation",
}


def detection_transform(
    preset: str, flip_index: list[int] | None = None, fit: Preprocess | None = None
) -> Callable[..., tuple[np.ndarray, Any]]:
    """``apply(image, target) -> (image, target)`` that moves boxes, masks and keypoints with the pixels.

    Boxes leaving the image are clipped, and dropped (with their masks and keypoints) when less than 30 %
    of them stays inside; keypoints that leave are marked not visible; a horizontal flip renames left and
    right keypoints through ``flip_index``. With ``fit`` the images end resized (and centre-cropped) as that
    preprocessing does: heads on a shared trunk train on what the trunk sees.
    """
    if preset not in DETECTION_PRESETS:
        raise CnnappsError(f"--augment {preset}: unknown detection preset; choose from {', '.join(DETECTION_PRESETS)}")
    import albumentations as A
    import cv2

    steps = []
    if preset == "default":
        steps = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        ]
    if fit is not None:
        _, height, width = fit.input_size
        if fit.resize_mode == "squash":
            steps.append(A.Resize(height, width))
        else:
            pad = A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0)
            steps += [A.SmallestMaxSize(max_size=fit.resize), pad, A.CenterCrop(height, width)]
    pipeline = A.Compose(
        steps or [A.NoOp()],  # the same answers; an empty list makes albumentations warn on every run
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["instance"], min_visibility=0.3, clip=True),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        save_applied_params=True,
    )

    def apply(image: np.ndarray, target: Any) -> tuple[np.ndarray, Any]:
        return apply_detection_pipeline(pipeline, image, target, flip_index)

    apply.pipeline = pipeline  # type: ignore[attr-defined]  # for seeding (pipeline.set_random_seed)
    return apply


_RESIZES = ("Resize", "SmallestMaxSize", "LongestMaxSize")


def _resize_shift(out: dict[str, Any]) -> tuple[float, float]:
    """What albumentations' resizes leave out of keypoints given about pixel centres (as flips and affines take
    them): they scale ``x * s``, where about pixel centres a resize is ``(x + 0.5) * s - 0.5``. The shift is
    carried through later resizes; the steps after a resize here only crop and pad (the fit runs last)."""
    applied = out.get("applied_transforms", [])
    shapes = [params.get("shape") for _, params in applied] + [out["image"].shape]
    dx = dy = 0.0
    for k, (name, params) in enumerate(applied):
        if name in _RESIZES and shapes[k] is not None and shapes[k + 1] is not None:
            (h0, w0), (h1, w1) = shapes[k][:2], shapes[k + 1][:2]
            sx, sy = (params["scale"], params["scale"]) if "scale" in params else (w1 / w0, h1 / h0)
            dx, dy = dx * sx + 0.5 * (sx - 1), dy * sy + 0.5 * (sy - 1)
    return dx, dy


def apply_detection_pipeline(pipeline: Any, image: np.ndarray, target: Any, flip_index: list[int] | None) -> Any:
    import dataclasses

    n = len(target.boxes)
    kps = target.keypoints
    args = {
        "image": image,
        "bboxes": target.boxes.reshape(-1, 4),
        "instance": list(range(n)),
        # albumentations places keypoints at pixel centres; COCO coordinates are continuous (corners at 0 and W)
        "keypoints": kps[..., :2].reshape(-1, 2) - 0.5 if kps is not None else np.zeros((0, 2), np.float32),
    }
    if target.masks is not None and n:
        args["masks"] = target.masks
    out = pipeline(**args)
    kept = np.array([int(i) for i in out["instance"]], np.int64)
    boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
    new = dataclasses.replace(target, boxes=boxes, labels=target.labels[kept])
    out_h, out_w = out["image"].shape[:2]
    if target.masks is not None:
        new.masks = np.asarray(out["masks"])[kept] if n else np.zeros((0, out_h, out_w), np.uint8)
    if kps is not None:
        xy = np.asarray(out["keypoints"], np.float32)[:, :2].reshape(n, kps.shape[1], 2) + 0.5  # n may be 0
        xy += np.asarray(_resize_shift(out), np.float32)
        vis = kps[..., 2].copy()
        flips = sum(name == "HorizontalFlip" for name, _ in out.get("applied_transforms", []))
        if flips % 2 and flip_index is not None:
            xy, vis = xy[:, flip_index], vis[:, flip_index]
        outside = (xy[..., 0] < 0) | (xy[..., 0] >= out_w) | (xy[..., 1] < 0) | (xy[..., 1] >= out_h)
        vis[outside] = 0
        new.keypoints = np.concatenate([xy, vis[..., None]], -1)[kept]
    return out["image"], new
