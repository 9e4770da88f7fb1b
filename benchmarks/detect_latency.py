"""Per-image CPU latency: our Mask R-CNN R50-FPN against torchvision's own maskrcnn_resnet50_fpn, same weights.

Both models run in this process on the same photos, interleaved, with the same weights: torchvision's
COCO checkpoint when it is in the hub cache, otherwise one random set of weights built the way
torchvision's builder builds the COCO model (frozen batch norm) and loaded into ours. Two comparisons:

- model: ``model([tensor])`` alone;
- end to end: ours = ``DetectionPredictor.predict(path)`` (decode, forward, masks as COCO RLE);
  plain = PIL open + ``to_tensor`` + forward + masks thresholded to numpy.

    python benchmarks/detect_latency.py [--repeats 5] [--threads N] [--write]
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
    """torchvision's maskrcnn_resnet50_fpn with COCO weights when cached; else the same architecture the
    builder makes for them (frozen batch norm, eps 0), randomly initialised. Returns (model, weights label)."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return maskrcnn_resnet50_fpn(weights=weights).eval(), f"COCO_V1 ({cached.name})"
    torch.manual_seed(0)
    model = MaskRCNN(_resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3), num_classes=91)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = 0.0
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), "random (no COCO checkpoint in the hub cache), built as for COCO_V1"


def photos(folder: Path) -> list[Path]:
    import cv2
    from skimage import data

    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), getattr(data, name)()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    from cnnapps.apps.detect.model import create_detector
    from cnnapps.apps.detect.predictor import DetectionPredictor
    from cnnapps.datasets.io import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    theirs, label = torchvision_model()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "weights.pth"
        torch.save(theirs.state_dict(), state)
        ours = create_detector("segment", "resnet50", weights=str(state)).eval()
        for m in ours.modules():  # torchvision's COCO_V1 model runs with eps 0 (ours does too with weights="coco")
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.eps = 0.0
        predictor = DetectionPredictor(model=ours, score_threshold=0.05, device="cpu")
        paths = photos(Path(tmp))
        tensors = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float().div(255) for p in paths]

        def plain(path: Path) -> list:
            with torch.inference_mode():
                out = theirs([to_tensor(Image.open(path).convert("RGB"))])[0]
            return list((out["masks"][:, 0] > 0.5).numpy())

        with torch.inference_mode():  # same outputs first: the comparison is between equal computations
            a, b = theirs([tensors[0]])[0], ours([tensors[0]])[0]
            counts = [len(theirs([t])[0]["boxes"]) for t in tensors]
        same = all(torch.allclose(a[k], b[k], atol=1e-4) for k in a) and len(a["boxes"]) == len(b["boxes"])

        timings: dict[str, list[float]] = {k: [] for k in ("model theirs", "model ours", "e2e plain", "e2e ours")}
        for _ in range(args.repeats):
            for path, tensor in zip(paths, tensors, strict=True):
                for key, run in (
                    ("model theirs", lambda t=tensor: theirs([t])),
                    ("model ours", lambda t=tensor: ours([t])),
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
    cores = torch.get_num_threads()
    body = (
        "## detection latency\n\n"
        f"`python benchmarks/detect_latency.py --repeats {args.repeats}` on {platform.machine()}, {cores} threads, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}; weights: {label}; 4 scikit-image photos "
        f"(resized by the model to 800 px on the short side), {args.repeats} rounds, interleaved; outputs equal: "
        f"{'yes' if same else 'NO'}.\n\n"
        "| what | torchvision `maskrcnn_resnet50_fpn` | cnnapps Mask R-CNN R50-FPN | overhead |\n"
        "| --- | ---: | ---: | ---: |\n"
        f"| model forward, median per image | {median['model theirs']:.0f} ms | {median['model ours']:.0f} ms | "
        f"{model_overhead:+.1%} |\n"
        f"| end to end (decode, forward, masks) | {median['e2e plain']:.0f} ms | {median['e2e ours']:.0f} ms | "
        f"{e2e_overhead:+.1%} |\n\n"
        "End to end, ours also encodes every mask as COCO RLE (what `--json` prints); the plain way stops at "
        f"thresholded numpy masks. Detections per photo at score >= 0.05: {', '.join(map(str, counts))}.\n"
    )
    from recording import record

    record("detection latency", body, args.write)


if __name__ == "__main__":
    main()
