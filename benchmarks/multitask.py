"""One trunk, four heads vs four separate models: same images, same answers, images/s and peak memory.

Four heads (classify, embed, segment, caption) are trained for a short while on one frozen trunk (the bundled
EfficientNet-Lite0, ``--trunk efficientnet_lite0``) on synthetic scenes, each written to its own model file (each
holding its own copy of the trunk), then joined by ``cnnapps compose``. Each way then runs in a fresh process:

- separate: the four files loaded with ``cnnapps.load`` (each its default engine), every image through each;
- one pass: the composed file loaded with ``cnnapps.load``: the trunk once per batch, the four heads on it.

Images/s counts images answered by all four heads per second of prediction (after a warm-up batch); peak memory
is the process's peak resident memory above what it held before loading the models (every library either way
uses already imported): the models, their compiled graphs and their working memory.

    python benchmarks/multitask.py --images 64 [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import record  # noqa: E402

HEADS = ("classify", "retrieve", "segment", "caption")


def train_heads(root: Path, epochs: int) -> dict[str, Path]:
    """Four heads on the frozen bundled trunk, trained briefly on synthetic scenes (a few minutes on 2 cores)."""
    import cv2
    import numpy as np

    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.caption.train import train_captioner
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import train_detector
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval
    from cnnapps.datasets.synthetic import main as synthetic
    from cnnapps.datasets.synthetic import shapes_scene, write_captions

    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "triangle"):  # one class per largest shape of a scene
        (root / "shapes-by-kind" / kind).mkdir(parents=True, exist_ok=True)
    n = 0
    while n < 90:
        image, instances = shapes_scene(rng, 160, max_objects=1)
        if instances:
            kind = instances[0].category
            cv2.imwrite(str(root / "shapes-by-kind" / kind / f"{n:03d}.png"), image[:, :, ::-1])
            n += 1
    synthetic(["shapes", str(root / "shapes"), "--train", "60", "--val", "12", "--size", "192"])
    write_captions(root / "captions", "train", 120, seed=0, size=160)
    write_captions(root / "captions", "val", 20, seed=1, size=160)
    common = {"trunk": "efficientnet_lite0", "epochs": epochs, "workers": 0, "progress": False, "batch_size": 16}
    runs = {name: root / "runs" / name for name in HEADS}
    kinds = str(root / "shapes-by-kind")
    train_classifier(load_config(None, data=kinds, out=str(runs["classify"]), augment="none", **common))
    train_retrieval(load_config(None, RetrieveConfig, data=kinds, out=str(runs["retrieve"]), augment="none",
                                **common))  # fmt: skip
    train_detector(load_config(None, DetectConfig, task="segment", data=str(root / "shapes/train.json"),
                               images=str(root / "shapes/train"), val_data=str(root / "shapes/val.json"),
                               val_images=str(root / "shapes/val"), out=str(runs["segment"]), fpn_channels=64,
                               options={"rpn_post_nms_top_n_test": 150, "box_batch_size_per_image": 128},
                               **{**common, "batch_size": 4}))  # fmt: skip
    train_captioner(load_config(None, CaptionConfig, data=str(root / "captions/train.json"),
                                images=str(root / "captions/train"), val_data=str(root / "captions/val.json"),
                                val_images=str(root / "captions/val"), out=str(runs["caption"]), grid=7,
                                embed_dim=128, hidden_dim=256, attention_dim=128, alpha_c=0.1, **common))  # fmt: skip
    return {name: run / "model.safetensors" for name, run in runs.items()}


def measure(way: str, files: list[str], images: list[str], out: str) -> None:
    """In a fresh process: load, warm up, predict every image, and write answers, timing and memory."""
    import resource

    import cv2  # noqa: F401  (every library either way uses is imported before the baseline is read)
    import numpy as np
    import pycocotools.mask  # noqa: F401
    import timm  # noqa: F401
    import torch
    import torchvision.models.detection  # noqa: F401

    import cnnapps
    import cnnapps.apps.caption.predictor
    import cnnapps.apps.classify.predictor
    import cnnapps.apps.detect.predictor
    import cnnapps.apps.multitask
    import cnnapps.apps.retrieve.embedder

    torch.set_num_threads(os.cpu_count() or 1)
    before = _rss_mb()
    loaded = time.perf_counter()
    if way.startswith("one pass"):
        engine = "eager" if "eager" in way else "auto"
        predictors = {"all": cnnapps.load(files[0], engine=engine)}
    else:
        predictors = {head: cnnapps.load(path, **({"task": "retrieve"} if head == "retrieve" else {}))
                      for head, path in zip(HEADS, files, strict=True)}  # fmt: skip
    load_seconds = time.perf_counter() - loaded
    for predictor in predictors.values():  # warm-up: first calls specialise graphs and allocators
        predictor.predict(images[:4])
    started = time.perf_counter()
    answers = {name: predictor.predict(images) for name, predictor in predictors.items()}
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_head = {head: [r.results[head] for r in answers["all"]] for head in HEADS} if "all" in answers else answers
    report = {
        "seconds": seconds,
        "load_seconds": load_seconds,
        "images_per_s": len(images) / seconds,
        "peak_above_baseline_mb": peak - before,
        "classify": [[p.score for p in sorted(r.predictions, key=lambda p: p.index)] for r in per_head["classify"]],
        "classify_top1": [r.top1.label for r in per_head["classify"]],
        "retrieve": [np.asarray(r.vector).tolist() for r in per_head["retrieve"]],
        "caption": [r.caption for r in per_head["caption"]],
        "segment": [[i.box for i in r.instances] for r in per_head["segment"]],
    }
    Path(out).write_text(json.dumps(report))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _median_run(found: list[dict]) -> dict:
    """The run with the median images/s, its peak memory replaced by the median peak of all runs."""
    import statistics

    ordered = sorted(found, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["peak_above_baseline_mb"] = statistics.median(r["peak_above_baseline_mb"] for r in found)
    return chosen


def compare(separate: dict, joined: dict) -> dict[str, float]:
    """The largest difference between the two ways' answers, per head (0 where answers are equal)."""
    import numpy as np

    diff = {
        "classify": float(np.abs(np.array(separate["classify"]) - np.array(joined["classify"])).max()),
        "retrieve": float(np.abs(np.array(separate["retrieve"]) - np.array(joined["retrieve"])).max()),
        "caption": float(sum(a != b for a, b in zip(separate["caption"], joined["caption"], strict=True))),
    }
    boxes = [(np.array(a), np.array(b)) for a, b in zip(separate["segment"], joined["segment"], strict=True)]
    same_count = all(a.shape == b.shape for a, b in boxes)
    diff["segment"] = max((float(np.abs(a - b).max()) for a, b in boxes if a.size), default=0.0) if same_count else 1e9
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="Images predicted by each way.")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs of each head.")
    parser.add_argument("--repeats", type=int, default=3, help="Fresh processes per way (medians are reported).")
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    parser.add_argument("--workdir", help="Keep the data and the trained heads here (reused when present).")
    parser.add_argument("--measure", nargs=4, metavar=("WAY", "FILES", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        way, files, images, out = args.measure
        measure(way, json.loads(files), json.loads(images), out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        started = time.perf_counter()
        files = {name: root / "runs" / name / "model.safetensors" for name in HEADS}
        cached = all(f.exists() for f in files.values())
        if not cached:
            files = train_heads(root, args.epochs)
        trained = "trained in an earlier run" if cached else f"{time.perf_counter() - started:.0f} s for all four"
        from cnnapps.apps.modelfile import compose

        joined = root / "four-heads.safetensors"
        joined.unlink(missing_ok=True)
        compose([str(files[h]) for h in HEADS], joined)
        scenes = sorted(str(p) for p in (root / "shapes" / "val").glob("*.png"))
        scenes += sorted(str(p) for p in (root / "captions" / "val").glob("*.png"))
        images = (scenes * (args.images // len(scenes) + 1))[: args.images]
        runs: dict[str, list[dict]] = {}
        ways = (("separate", [str(files[h]) for h in HEADS]), ("one pass", [str(joined)]),
                ("one pass eager", [str(joined)]))  # fmt: skip
        for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits every way
            for way, paths in ways:
                out = root / f"{way.replace(' ', '-')}.json"
                subprocess.run([sys.executable, __file__, "--measure", way, json.dumps(paths), json.dumps(images),
                                str(out)], check=True)  # fmt: skip
                runs.setdefault(way, []).append(json.loads(out.read_text()))
        results = {way: _median_run(found) for way, found in runs.items()}
        sizes = {h: files[h].stat().st_size / 2**20 for h in HEADS}
        joined_mb = joined.stat().st_size / 2**20
    sep, one, eager = results["separate"], results["one pass"], results["one pass eager"]
    diff = compare(sep, one)
    import torch

    speed = one["images_per_s"] / sep["images_per_s"]
    memory = one["peak_above_baseline_mb"] / sep["peak_above_baseline_mb"]
    eager_speed = eager["images_per_s"] / sep["images_per_s"]
    eager_memory = eager["peak_above_baseline_mb"] / sep["peak_above_baseline_mb"]
    body = (
        "## one trunk, four heads\n\n"
        f"`python benchmarks/multitask.py --images {args.images} --epochs {args.epochs}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}. Trunk: the bundled "
        f"EfficientNet-Lite0, frozen (224 px); heads trained {args.epochs} epochs on synthetic scenes with "
        f"`--trunk efficientnet_lite0` ({trained}): classify (3 shapes), embed "
        "(1280-d to 128-d), segment (Mask R-CNN heads, 64-channel FPN), caption (LSTM, 7 x 7 grid). Each way in a "
        f"fresh process ({args.repeats} times, interleaved; medians), the same {args.images} images (synthetic "
        "scenes, 160-192 px).\n\n"
        "| way | model files | images/s (all four answers) | predict time | peak memory above baseline |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        f"| four separate models (`cnnapps.load` each) | {sum(sizes.values()):.1f} MB | {sep['images_per_s']:.2f} | "
        f"{sep['seconds']:.1f} s | {sep['peak_above_baseline_mb']:.0f} MB |\n"
        f"| one file, one trunk pass (`cnnapps.load(four-heads)`) | {joined_mb:.1f} MB | {one['images_per_s']:.2f} | "
        f"{one['seconds']:.1f} s | {one['peak_above_baseline_mb']:.0f} MB |\n"
        f'| the same, trunk in eager PyTorch (`engine="eager"`) | {joined_mb:.1f} MB | {eager["images_per_s"]:.2f} | '
        f"{eager['seconds']:.1f} s | {eager['peak_above_baseline_mb']:.0f} MB |\n\n"
        f"**{speed:.2f}x** the images/s of four separate models, at **{memory:.0%}** of their peak memory "
        f"(eager trunk: {eager_speed:.2f}x at {eager_memory:.0%}). "
        f"Answers: classify probabilities within {diff['classify']:.1e}, embeddings within {diff['retrieve']:.1e}, "
        f"{int(diff['caption'])} of {args.images} captions different, segment boxes within {diff['segment']:.1e} px "
        '(on a CPU every trunk, separate or shared, runs as a fused TorchScript graph unless `engine="eager"`).\n'
    )
    record("one trunk, four heads", body, args.write)


if __name__ == "__main__":
    main()
