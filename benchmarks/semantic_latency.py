"""Per-image CPU latency: cnnapps' DeepLabV3 R50 against torchvision's own deeplabv3_resnet50, same weights.

Both models run in this process on the same photos, interleaved, with the same weights: torchvision's
COCO_WITH_VOC_LABELS_V1 checkpoint when it is in the hub cache, otherwise one random set of weights built the way
torchvision's builder builds that model, loaded into ours. torchvision's model also runs its auxiliary head in every
forward pass; it is removed here, so that both sides compute the same thing. Two comparisons:

- model: ``model(batch)`` alone (ours returns the logits, torchvision's ``{"out": logits}``);
- end to end: ours = ``SemanticPredictor.predict(path)`` (decode, resize, forward, logits back to the photo's size,
  class map, per-class areas); plain = torchvision's ``decode_image`` + its ``SemanticSegmentation`` preset (as
  torchvision's documentation runs its weights) + forward + logits back to the photo's size + argmax to numpy.

    python benchmarks/semantic_latency.py [--size 256] [--resize 256] [--repeats 5] [--threads N] [--write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def torchvision_model():
    """torchvision's deeplabv3_resnet50 with its VOC-label weights when cached; else the same architecture its builder
    makes for them, randomly initialised (with non-trivial batch-norm statistics). Returns (model, weights label)."""
    import torch
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

    weights = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return deeplabv3_resnet50(weights=weights).eval(), f"COCO_WITH_VOC_LABELS_V1 ({cached.name})"
    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), "random (no checkpoint in the hub cache), built as for COCO_WITH_VOC_LABELS_V1"


def photos(folder: Path, size: int) -> list[Path]:
    import cv2
    from skimage import data

    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(data, name)()
        scale = size / min(rgb.shape[:2])
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        path = folder / f"{name}.png"  # lossless: both ways decode the same pixels
        cv2.imwrite(str(path), rgb[:, :, ::-1])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="shorter side of the photos")
    parser.add_argument("--resize", type=int, default=256, help="shorter side the models see (torchvision: 520)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_image
    from torchvision.transforms._presets import SemanticSegmentation

    from cnnapps.apps.semantic.model import ShorterSide, create_semantic
    from cnnapps.apps.semantic.predictor import SemanticPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    theirs, label = torchvision_model()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "weights.pth"
        torch.save(theirs.state_dict(), state)
        ours = create_semantic("deeplabv3", "resnet50", weights=str(state)).eval()
        theirs.aux_classifier = None  # torchvision would compute its auxiliary head too; ours does not at inference
        predictor = SemanticPredictor(model=ours, preprocess=ShorterSide(args.resize), device="cpu", batch_size=1)
        preset = SemanticSegmentation(resize_size=args.resize)
        paths = photos(Path(tmp), args.size)
        batches = [preset(decode_image(str(p)))[None] for p in paths]

        def plain(path: Path) -> np.ndarray:
            image = decode_image(str(path))
            with torch.inference_mode():
                logits = theirs(preset(image)[None])["out"]
                logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
            return logits[0].argmax(0).to(torch.uint8).numpy()

        with torch.inference_mode():  # same outputs first: the comparison is between equal computations
            same_logits = all(torch.equal(theirs(b)["out"], ours(b)) for b in batches[:1])
        same_maps = all(np.array_equal(plain(p), predictor.predict(p)[0].labels) for p in paths)

        timings: dict[str, list[float]] = {k: [] for k in ("model theirs", "model ours", "e2e plain", "e2e ours")}
        for _ in range(args.repeats):
            for path, batch in zip(paths, batches, strict=True):
                for key, run in (
                    ("model theirs", lambda b=batch: theirs(b)),
                    ("model ours", lambda b=batch: ours(b)),
                    ("e2e plain", lambda p=path: plain(p)),
                    ("e2e ours", lambda p=path: predictor.predict([p])),
                ):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        run()
                    timings[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    model_overhead = median["model ours"] / median["model theirs"] - 1
    e2e_overhead = median["e2e ours"] / median["e2e plain"] - 1
    shape = "x".join(str(s) for s in batches[0].shape[-2:])
    options = f"--size {args.size} --resize {args.resize} --repeats {args.repeats}"
    command = f"python benchmarks/semantic_latency.py {options}"
    body = (
        "## semantic segmentation latency\n\n"
        f"`{command}` on {platform.machine()}, {torch.get_num_threads()} threads, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}; weights: {label}; 4 scikit-image photos (shorter side {args.size} px, resized by "
        f"both to {args.resize} px, e.g. {shape}), {args.repeats} rounds, interleaved; logits bit-identical: "
        f"{'yes' if same_logits else 'NO'}; class maps identical: {'yes' if same_maps else 'NO'}.\n\n"
        "| what | torchvision `deeplabv3_resnet50` | cnnapps DeepLabV3 R50 | overhead |\n"
        "| --- | ---: | ---: | ---: |\n"
        f"| model forward, median per image | {median['model theirs']:.0f} ms | {median['model ours']:.0f} ms | "
        f"{model_overhead:+.1%} |\n"
        f"| end to end (decode, resize, forward, class map) | {median['e2e plain']:.0f} ms | "
        f"{median['e2e ours']:.0f} ms | {e2e_overhead:+.1%} |\n\n"
        "End to end, ours also counts each class's pixels (what `--json` prints). torchvision's model had its "
        "auxiliary head removed: its builder keeps it for these weights and would run it in every forward pass.\n"
    )
    from recording import record

    record("semantic segmentation latency", body, args.write)


if __name__ == "__main__":
    main()
