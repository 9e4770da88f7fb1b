"""A synthetic tracking video with exact ground truth, for tests, demos and measuring trackers.

Coloured circles, squares and triangles, drawn as in the ``shapes`` scenes of :mod:`cnnapps.datasets.synthetic`
(same shapes, colours and sizes in pixels, so a detector trained there finds them), move with constant velocities
over one fixed textured background and bounce off the frame's edges; each object is a distinct (shape, colour)
pair. Their paths cross: they are drawn in a fixed depth order, so the one behind loses visibility. Static grey
"pillars" (vertical bands) are drawn over everything; objects pass behind them and are hidden for several frames.
To make re-identification matter, an object wholly hidden behind a pillar turns back with probability 0.5 (once
per hidden stretch, as its centre passes the pillar's middle), so it reappears on the side it entered from, where
a motion-only tracker does not look for it.

Written into ``out/``:

- ``video.mp4``: the frames (H.264);
- ``gt/gt.txt``: MOTChallenge ground truth ``frame,id,x,y,w,h,conf,class,visibility``: frames 1-based, ``conf``
  1, ``class`` the 1-based index into :data:`~cnnapps.datasets.synthetic.SHAPES`, ``visibility`` the fraction of
  the object's pixels left visible, computed exactly from the rendered masks. Boxes are the whole shape (also
  where it is covered), in the coordinates of the COCO boxes of the ``shapes`` scenes and of cnnapps' own MOT
  results: x, y is the top-left corner of the top-left pixel, 0 at the image's edge (not MOTChallenge's 1-based
  pixels). Only objects with visibility >= 0.25 get a line;
- ``seqinfo.ini``: MOTChallenge's sequence information (name, frameRate, seqLength, imWidth, imHeight);
- ``labels.json``: the class names, each id's shape, colour and size, the pillars, and every stretch of frames
  in which an object was wholly hidden behind a pillar (1-based, inclusive) and whether it turned back there.

    python -m cnnapps.datasets.synthetic_video data/track-demo --frames 300 --objects 6 --seed 0

:func:`frames_dataset` (``--coco``) writes detector training data from such videos instead: frames sampled from
videos of other seeds (1000 and up; seeds 0-9 are kept for measuring trackers), decoded from their H.264 files as a
tracker sees them, with the ground truth of the MOTChallenge files (full boxes of objects at least 25 % visible) as
COCO JSON with the categories of the ``shapes`` scenes:

    python -m cnnapps.datasets.synthetic_video data/video-shapes --coco --videos 24 --val-videos 2 --every 15
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.datasets.synthetic import COLOURS, SHAPES, _background, _shape_mask
from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError, atomic_write

#: Seeds of the videos trackers are measured on (``benchmarks/tracking.py``: 0-2 evaluation, 3 validation);
#: :func:`frames_dataset` refuses them, so a detector never trains on the frames it is scored on.
HELD_OUT_SEEDS = range(10)
#: The first seed of :func:`frames_dataset`'s videos by default.
TRAIN_SEED = 1000

#: Shape radii in pixels: the range of the ``shapes`` scenes (0.06-0.16 of their 256-pixel images).
RADIUS_RANGE = (0.06 * 256, 0.16 * 256)
#: Objects with less visibility than this get no ground-truth line.
MIN_VISIBILITY = 0.25
#: A shape's half-width over its radius (squares and triangles are drawn with corners beyond the radius).
_HALF_WIDTH = {"circle": 1.0, "square": 1.2, "triangle": 1.25}
_MIN_PILLAR = 56  # pixels: wide enough to hide the smaller shapes wholly for several frames


@dataclass
class _Object:
    ident: int
    shape: str
    colour: str
    shade: np.ndarray
    radius: float
    angle: float
    x: float
    y: float
    vx: float
    vy: float
    hidden_since: int | None = None  # frame (0-based) since which it is wholly behind ``pillar``
    pillar: int = -1
    side: float = 0.0  # which side of the pillar's middle it entered from
    turn: bool = False  # whether it turns back in this hidden stretch
    turned: bool = False

    def mask(self, width: int, height: int) -> np.ndarray:
        return _shape_mask(self.shape, (self.x, self.y), self.radius, self.angle, max(width, height))[
            :height, :width
        ].astype(bool)


def _pillars(rng: np.random.Generator, count: int, width: int, height: int) -> tuple[list[tuple[int, int]], Any]:
    """``count`` vertical bands, evenly spaced, about 1/8 of the width each; their spans and their texture."""
    band = max(round(width / 8), _MIN_PILLAR)
    spans = []
    for k in range(count):
        centre = round((k + 1) * width / (count + 1))
        x0 = min(max(0, centre - band // 2), max(0, width - band))
        spans.append((x0, min(width, x0 + band)))
    base = float(rng.uniform(105, 150))
    rows = np.linspace(-12, 12, height, dtype=np.float32)[:, None]
    stripes = 10 * np.sin(np.arange(width, dtype=np.float32) / 3.0)[None, :] * (rng.random() < 0.5)
    texture = base + rows + stripes + rng.normal(0, 6, (height, width)).astype(np.float32)
    texture = np.repeat(np.clip(texture, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return spans, texture


def _objects(rng: np.random.Generator, count: int, width: int, height: int, band: int | None) -> list[_Object]:
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    if not 1 <= count <= len(pairs):
        raise CnnappsError(f"objects: {count} asked; between 1 and {len(pairs)} distinct shape-colour pairs exist")
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:count]]
    objects = []
    for i, (shape, colour) in enumerate(chosen):
        low, high = RADIUS_RANGE
        high = min(high, (min(width, height) / 2 - 2) / _HALF_WIDTH[shape])
        hider = band is not None and i % 2 == 0  # small enough to vanish wholly behind a pillar
        if hider:
            high = min(high, max(low, (band - 12) / 2 / _HALF_WIDTH[shape]))
        if high < low:
            raise CnnappsError(f"frame {width}x{height}: too small for the shapes (radius {low:.0f}-{high:.0f} px)")
        radius = float(rng.uniform(low, high))
        half = _HALF_WIDTH[shape] * radius + 1
        angle = float(rng.uniform(0, 2 * math.pi)) if shape == "triangle" else float(rng.uniform(-0.3, 0.3))
        shade = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255).astype(np.uint8)
        speed = float(rng.uniform(0.8, 2.0) if hider else rng.uniform(1.0, 3.0))
        direction = 1.0 if i % 2 == 0 else -1.0  # half go right, half left: their paths cross
        x = float(rng.uniform(half, width / 2) if direction > 0 else rng.uniform(width / 2, width - half))
        y = float(rng.uniform(half, height - half))
        objects.append(
            _Object(i + 1, shape, colour, shade, radius, angle, x, y, direction * speed, float(rng.uniform(-1.5, 1.5)))
        )
    return objects


def _bounce(position: float, velocity: float, low: float, high: float) -> tuple[float, float]:
    position += velocity
    if position < low:
        return 2 * low - position, abs(velocity)
    if position > high:
        return 2 * high - position, -abs(velocity)
    return position, velocity


def tracking_video(
    out: Path,
    *,
    frames: int = 300,
    objects: int = 6,
    width: int = 320,
    height: int = 240,
    fps: float = 25,
    occluders: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the video, its MOTChallenge ground truth, ``seqinfo.ini`` and ``labels.json`` into ``out``.

    Returns the four paths (``video``, ``gt``, ``seqinfo``, ``labels``) and counts: ``frames``, ``objects``,
    ``boxes`` (ground-truth lines), ``hidden`` (stretches wholly behind a pillar) and ``reversals`` (those in
    which the object turned back). None of the four files may exist already (:class:`OutputExistsError`).
    Objects with visibility under 0.25 get no ground-truth line in that frame. Deterministic for a seed.
    """
    from cnnapps.datasets.video import VideoWriter

    out = Path(out)
    if frames < 1 or occluders < 0 or width < 32 or height < 32 or not fps > 0:
        raise CnnappsError(
            f"{out}: frames must be >= 1, occluders >= 0, width and height >= 32 and fps > 0 "
            f"(got {frames}, {occluders}, {width}x{height}, {fps})"
        )
    paths = {"video": out / "video.mp4", "gt": out / "gt" / "gt.txt", "seqinfo": out / "seqinfo.ini",
             "labels": out / "labels.json"}  # fmt: skip
    for path in paths.values():
        if os.path.lexists(path):
            raise OutputExistsError(path)
    rng = np.random.default_rng(seed)
    background = _background(rng, max(width, height))[:height, :width]
    spans, texture = _pillars(rng, occluders, width, height)
    pillar = np.zeros((height, width), bool)
    for x0, x1 in spans:
        pillar[:, x0:x1] = True
    band = (spans[0][1] - spans[0][0]) if spans else None
    things = _objects(rng, objects, width, height, band)
    turns = np.random.default_rng([seed, 1])  # its own stream: turning never shifts the scene's draws
    lines: list[str] = []
    hidden: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    with VideoWriter(paths["video"], fps) as writer:
        for t in range(frames):
            masks = [o.mask(width, height) for o in things]
            image = background.copy()
            for o, mask in zip(things, masks, strict=True):  # depth order: later objects in front
                image[mask] = o.shade
            image[pillar] = texture[pillar]
            writer.write(image)
            covered = pillar.copy()
            frame_lines = []
            for o, mask in reversed(list(zip(things, masks, strict=True))):
                area = int(mask.sum())
                visibility = int((mask & ~covered).sum()) / area if area else 0.0
                covered |= mask
                if visibility >= MIN_VISIBILITY:
                    ys, xs = np.nonzero(mask)
                    x0, y0 = int(xs.min()), int(ys.min())
                    w, h = int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0
                    cls = SHAPES.index(o.shape) + 1
                    frame_lines.append((o.ident, f"{t + 1},{o.ident},{x0},{y0},{w},{h},1,{cls},{visibility:.6g}"))
                _track_hiding(o, t, area > 0 and not (mask & ~pillar).any(), spans, turns, hidden)
            lines.extend(text for _, text in sorted(frame_lines))
            for o in things:
                half = _HALF_WIDTH[o.shape] * o.radius + 1
                o.x, o.vx = _bounce(o.x, o.vx, half, width - 1 - half)
                o.y, o.vy = _bounce(o.y, o.vy, half, height - 1 - half)
    for o in things:  # stretches still open at the end
        _track_hiding(o, frames, False, spans, turns, hidden)
    hidden.sort(key=lambda h: (h["first"], h["id"]))
    atomic_write(paths["gt"], ("\n".join(lines) + "\n").encode())
    seqinfo = (f"[Sequence]\nname={out.resolve().name}\nframeRate={fps:g}\nseqLength={frames}\n"
               f"imWidth={writer.width}\nimHeight={writer.height}\n")  # fmt: skip
    atomic_write(paths["seqinfo"], seqinfo.encode())
    labels = {
        "classes": list(SHAPES),
        "objects": [
            {
                "id": o.ident,
                "shape": o.shape,
                "class": SHAPES.index(o.shape) + 1,
                "colour": o.colour,
                "rgb": [int(v) for v in o.shade],
                "radius": round(o.radius, 2),
            }
            for o in things
        ],
        "pillars": [{"x0": x0, "x1": x1} for x0, x1 in spans],
        "hidden": hidden,
        "width": width,
        "height": height,
        "fps": fps,
        "frames": frames,
        "seed": seed,
        "min_visibility": MIN_VISIBILITY,
    }
    atomic_write(paths["labels"], (json.dumps(labels, indent=1) + "\n").encode())
    return {**paths, "frames": writer.frames_written, "objects": len(things), "boxes": len(lines),
            "hidden": len(hidden), "reversals": sum(h["reversed"] for h in hidden)}  # fmt: skip


def _track_hiding(
    o: _Object, t: int, wholly_hidden: bool, spans: list[tuple[int, int]], turns: np.random.Generator,
    hidden: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Open or close ``o``'s hidden stretch at frame ``t`` (0-based), and turn it back midway when drawn to."""
    if wholly_hidden and o.hidden_since is None:
        o.hidden_since, o.turned = t, False
        o.pillar = min(range(len(spans)), key=lambda k: abs((spans[k][0] + spans[k][1]) / 2 - o.x))
        o.side = math.copysign(1.0, o.x - (spans[o.pillar][0] + spans[o.pillar][1]) / 2)
        o.turn = bool(turns.random() < 0.5)
    if wholly_hidden and o.turn and not o.turned:
        middle = (spans[o.pillar][0] + spans[o.pillar][1]) / 2
        if (o.x - middle) * o.side <= 0 or (o.x + o.vx - middle) * o.side <= 0:  # at or about to pass the middle
            o.vx, o.turned = -o.vx, True
    if not wholly_hidden and o.hidden_since is not None:
        hidden.append({"id": o.ident, "pillar": o.pillar + 1, "first": o.hidden_since + 1, "last": t,
                       "reversed": o.turned})  # fmt: skip
        o.hidden_since = None


def frames_dataset(
    out: Path,
    *,
    videos: int = 24,
    val_videos: int = 2,
    frames: int = 300,
    every: int = 15,
    seed: int = TRAIN_SEED,
    objects: int = 6,
    width: int = 320,
    height: int = 240,
    occluders: int = 1,
) -> dict[str, Any]:
    """Detector training data from synthetic tracking videos: ``out/train/*.png``, ``out/train.json``,
    ``out/val/*.png`` and ``out/val.json`` (COCO, the categories of the ``shapes`` scenes).

    ``videos`` videos of seeds ``seed``, ``seed + 1``, ... give the training frames, the next ``val_videos`` the
    validation frames; each is made by :func:`tracking_video` (``frames`` long, the other settings as there), and
    every ``every``-th frame of it (0-based index divisible by ``every``) is decoded from its H.264 file, so the
    detector trains on the compressed pixels a tracker gets. Each frame's annotations are its ground-truth lines:
    full boxes of the objects at least 25 % visible (an annotation's ``visibility`` says how much, its ``track_id``
    which object of its video it is, and an image's ``video_id`` which video: ``cnnapps train track`` learns the
    appearance of identities from them); images are named ``v<seed>_<frame>.png`` (frame 0-based). Seeds in
    :data:`HELD_OUT_SEEDS` are refused (trackers are measured on those videos). Returns the two JSON paths and
    counts: ``train_images``, ``val_images``, ``train_boxes``, ``val_boxes``. Existing files are never written over
    (:class:`OutputExistsError`). Deterministic for a seed.
    """
    import tempfile

    import cv2

    from cnnapps.datasets.synthetic import categories
    from cnnapps.datasets.video import VideoSource

    out = Path(out)
    if videos < 1 or val_videos < 0 or every < 1:
        raise CnnappsError(f"{out}: need videos >= 1, val_videos >= 0 and every >= 1 (got {videos}, {val_videos}, "
                           f"{every})")  # fmt: skip
    seeds = range(seed, seed + videos + val_videos)
    if set(seeds) & set(HELD_OUT_SEEDS):
        raise CnnappsError(
            f"seeds {seeds.start}-{seeds.stop - 1}: seeds {HELD_OUT_SEEDS.start}-{HELD_OUT_SEEDS.stop - 1} are held "
            f"out for measuring trackers; start at {TRAIN_SEED}"
        )
    splits = {"train": seeds[:videos], "val": seeds[videos:]}
    for split, chosen in splits.items():
        for path in (out / f"{split}.json", out / split):
            if chosen and os.path.lexists(path):
                raise OutputExistsError(path)
    cats = categories("shapes")
    made: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="synthetic-video-") as scratch:
        for split, chosen in splits.items():
            if not chosen:
                continue
            folder = out / split
            folder.mkdir(parents=True)
            images: list[dict[str, Any]] = []
            annotations: list[dict[str, Any]] = []
            for s in chosen:
                video = tracking_video(Path(scratch) / str(s), frames=frames, objects=objects, width=width,
                                       height=height, occluders=occluders, seed=s)  # fmt: skip
                truth: dict[int, list[list[float]]] = {}
                for line in video["gt"].read_text().splitlines():
                    values = [float(v) for v in line.split(",")]
                    truth.setdefault(int(values[0]) - 1, []).append(values)
                with VideoSource(str(video["video"])) as source:
                    for frame in source:
                        if frame.index % every:
                            continue
                        name = f"v{s}_{frame.index:05d}.png"
                        cv2.imwrite(str(folder / name), np.ascontiguousarray(frame.rgb[:, :, ::-1]))
                        rows, cols = frame.rgb.shape[:2]
                        images.append({"id": len(images) + 1, "file_name": name, "width": cols, "height": rows,
                                       "video_id": s, "video_seed": s, "frame": frame.index})  # fmt: skip
                        for _, ident, x, y, w, h, _, cls, visibility in truth.get(frame.index, []):
                            annotations.append({"id": len(annotations) + 1, "image_id": len(images),
                                                "category_id": int(cls), "bbox": [x, y, w, h], "area": w * h,
                                                "iscrowd": 0, "track_id": int(ident),
                                                "visibility": visibility})  # fmt: skip
            path = out / f"{split}.json"
            atomic_write(path, json.dumps({"images": images, "annotations": annotations, "categories": cats}).encode())
            made.update({split: path, f"{split}_images": len(images), f"{split}_boxes": len(annotations)})
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic tracking video with MOTChallenge ground truth "
                                     "(or, with --coco, detector training frames from such videos).")  # fmt: skip
    parser.add_argument("out", type=Path, help="Folder to create (or an empty one).")
    parser.add_argument("--frames", type=int, default=300, help="Frames per video.")
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--occluders", type=int, default=1, help="Pillars objects hide behind.")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"The video's seed [0]; with --coco the first video's [{TRAIN_SEED}].")  # fmt: skip
    coco = parser.add_argument_group("detector training data (--coco)")
    coco.add_argument("--coco", action="store_true",
                      help="Write train/val frames sampled from videos as COCO JSON instead of one video.")  # fmt: skip
    coco.add_argument("--videos", type=int, default=24, help="Videos the training frames come from.")
    coco.add_argument("--val-videos", type=int, default=2, help="Videos the validation frames come from.")
    coco.add_argument("--every", type=int, default=15, help="Keep every N-th frame of each video.")
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.exit(2, f"error: {args.out}: already exists and is not an empty folder; choose another\n")
    if args.coco:
        try:
            made = frames_dataset(args.out, videos=args.videos, val_videos=args.val_videos, frames=args.frames,
                                  every=args.every, seed=TRAIN_SEED if args.seed is None else args.seed,
                                  objects=args.objects, width=args.width, height=args.height,
                                  occluders=args.occluders)  # fmt: skip
        except CnnappsError as exc:
            parser.exit(2, f"error: {exc}\n")
        for split in ("train", "val"):
            if split in made:
                print(f"{made[split]}: {made[f'{split}_images']} frames, {made[f'{split}_boxes']} boxes "
                      f"in {args.out / split}")  # fmt: skip
        return
    args.seed = 0 if args.seed is None else args.seed
    try:
        made = tracking_video(args.out, frames=args.frames, objects=args.objects, width=args.width,
                              height=args.height, fps=args.fps, occluders=args.occluders, seed=args.seed)  # fmt: skip
    except CnnappsError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(
        f"{made['video']}: {made['frames']} frames, {made['objects']} objects, {made['boxes']} ground-truth boxes "
        f"in {made['gt']}, {made['hidden']} hidden stretches ({made['reversals']} turned back)"
    )


if __name__ == "__main__":
    main()
