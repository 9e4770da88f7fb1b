"""INT8 and OpenVINO against today's fp32 onnxruntime path, on the CPU: images/s and agreement, one run, one process.

Each model is written to a temporary folder as fp32 ONNX and as static INT8 ONNX (``cnnapps export --int8``'s code:
QDQ, int8 weights per channel (7 bits), uint8 activations calibrated (percentile) on a calibration folder,
fully connected layers fp32) and runs on four
engines: onnxruntime fp32 (the baseline: the graph ``--engine onnxruntime`` runs), onnxruntime INT8, OpenVINO fp32
and OpenVINO on the INT8 file (where it loads).

- images/s: the engine's runner, built as predictors build it (``cnnapps.exported.graph_runner``), on preprocessed
  batches of the held-out images, at batch 4 (what ``cnnapps classify`` uses on a CPU, and the batch of the
  README's CPU figures) and batch 1 (one image per call: latency); and end to end from the image files through
  ``cnnapps.load(file, engine=...).predict_proba`` (its default batch; decoding and preprocessing, the same for
  every engine, included). Rounds alternate the engines (``--repeats``), after a warm-up; best of each.
- agreement: top-1 against fp32 onnxruntime on held-out images, and the largest change of any probability.
  EfficientNet-Lite0 (bundled, ImageNet): held out are crops, flips and rescales of scikit-image's chelsea, coffee,
  astronaut and rocket; calibration images come from other photos (scikit-learn's china and flower, scikit-image's
  motorcycle pair, camera, hubble_deep_field and immunohistochemistry), so no photo is in both. The digits
  classifier (runs/digits/model.safetensors): calibrated on data/digits/train, checked on all of data/digits/val.

Goals: INT8 >= 1.8x the images/s of fp32 onnxruntime with top-1 agreement >= 99 %; OpenVINO >= 1.2x with
probabilities within 1e-3 of onnxruntime's (judged at batch 4).

    python benchmarks/engines.py [--models lite0 digits] [--repeats 3] [--check-images 100]
        [--calibration-images 64] [--limit N] [--write]

``--limit N`` caps every image set at N (a quick try; the recorded figures use the full sets). ``--write`` records
the table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from recording import describe_machine, record

ROOT = Path(__file__).resolve().parent.parent
TITLE = "engines: INT8 and OpenVINO against fp32 onnxruntime (CPU)"
DIGITS_MODEL, DIGITS_DATA = ROOT / "runs/digits/model.safetensors", ROOT / "data/digits"
MAKE_DIGITS = (
    "python scripts/make_digits.py data/digits && cnnapps train classify --config configs/classify/digits.yaml"
)
CHECK_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
CALIBRATION_PHOTOS = ("china", "flower", "motorcycle_left", "motorcycle_right", "camera", "hubble_deep_field",
                      "immunohistochemistry")  # fmt: skip
#: (row name, which file, engine)
ENGINES = (
    ("onnxruntime fp32", "fp32", "onnxruntime"),
    ("onnxruntime INT8", "int8", "onnxruntime"),
    ("OpenVINO fp32", "fp32", "openvino"),
    ("OpenVINO on the INT8 file", "int8", "openvino"),
)
BASE = ENGINES[0][0]
GOALS = {"int8": (1.8, 0.99), "openvino": (1.2, 1e-3)}  # INT8: speed-up, top-1 agreement; OpenVINO: speed-up, |Δp|


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo that ships with scikit-image or scikit-learn (nothing is downloaded)."""
    from skimage import data

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name.startswith("motorcycle"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    img = getattr(data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def write_variants(folder: Path, names: tuple[str, ...], n: int, seed: int) -> None:
    """``n`` JPEGs from the photos ``names`` in turn: each photo whole first, then random crops (50-100 % of each
    side), mirrored half the time, rescaled 0.6-1.6x."""
    import cv2

    photos = [photo(name) for name in names]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = photos[k % len(photos)]
        h, w = img.shape[:2]
        if k >= len(photos):
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = img[y : y + ch, x : x + cw]
            if rng.random() < 0.5:
                img = img[:, ::-1]
            scale = rng.uniform(0.6, 1.6)
            img = cv2.resize(np.ascontiguousarray(img), (max(32, int(cw * scale)), max(32, int(ch * scale))))
        cv2.imwrite(str(folder / f"{k:04d}.jpg"), np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])


def capped(folder: Path, limit: int | None, dest: Path) -> Path:
    """``folder`` itself, or with ``limit`` a copy of that many of its images (spread over it, class folders kept)."""
    if limit is None:
        return folder
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    for i in np.linspace(0, len(images) - 1, min(limit, len(images))):
        source = images[int(i)]
        target = dest / source.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return dest


def image_paths(folder: Path) -> list[str]:
    from cnnapps.datasets.folders import find_images

    return sorted(find_images(folder))


#: a timed round goes over the batches again until it has lasted this long (a small model's one pass takes a
#: fraction of a second, where a scheduler's hiccup would decide the figure)
ROUND_SECONDS = 2.0


def rate(run: Any, batches: list[Any], n: int) -> float:
    """Images per second of ``run`` over ``batches`` (``n`` images), passes repeated for ``ROUND_SECONDS``."""
    started, done = time.perf_counter(), 0
    while True:
        for x in batches:
            run(x)
        done += n
        elapsed = time.perf_counter() - started
        if elapsed >= ROUND_SECONDS:
            return done / elapsed


def measure(label: str, spec: str, calibrate: Path, check: Path, tmp: Path, repeats: int) -> dict[str, Any]:
    """Export ``spec`` as fp32 and INT8 ONNX, then time and compare the engines on the images of ``check``."""
    import torch

    import cnnapps
    from cnnapps.datasets.io import read_image
    from cnnapps.errors import CnnappsError
    from cnnapps.export import export_model
    from cnnapps.exported import graph_runner

    files = {"fp32": tmp / f"{label}-fp32.onnx", "int8": tmp / f"{label}-int8.onnx"}
    started = time.perf_counter()
    export_model(spec, "onnx", files["fp32"])
    int8 = export_model(spec, "onnx", files["int8"], int8=True, calibrate=calibrate, check=check)
    print(f"{label}: exported fp32 and INT8 in {time.perf_counter() - started:.0f} s (the export's own check: "
          f"{int8['check']})", flush=True)  # fmt: skip
    paths = image_paths(check)
    base = cnnapps.load(str(files["fp32"]), engine="onnxruntime", device="cpu")
    preprocess, batch = base.members[0].preprocess, base.batch_size
    x = torch.from_numpy(np.stack([preprocess(read_image(p)) for p in paths]))
    sizes = (batch, 1)
    batches = {b: [x[i : i + b] for i in range(0, len(x), b)] for b in sizes}
    ready, failed, threads = {}, {}, None
    for name, which, engine in ENGINES:
        try:
            runners = {b: graph_runner(str(files[which]), engine, "cpu", b) for b in sizes}
            predictor = cnnapps.load(str(files[which]), engine=engine, device="cpu")
        except CnnappsError as exc:
            failed[name] = str(exc)
            continue
        if engine == "openvino":
            threads = int(runners[batch].compiled.get_property("INFERENCE_NUM_THREADS"))
        for b in sizes:  # warm-up: first calls allocate and pick kernels
            for chunk in batches[b][:2]:
                runners[b](chunk)
        predictor.predict_proba(paths[: 2 * batch])
        ready[name] = (runners, predictor)
    best: dict[tuple[str, Any], float] = {}
    probs: dict[str, np.ndarray] = {}
    for _ in range(repeats):  # alternate, so drift in the machine's load hits every engine alike
        for name, (runners, predictor) in ready.items():
            for b in sizes:
                best[name, b] = max(best.get((name, b), 0.0), rate(runners[b], batches[b], len(x)))
            started = time.perf_counter()
            _, probs[name], errors = predictor.predict_proba(paths)
            best[name, "files"] = max(best.get((name, "files"), 0.0), len(paths) / (time.perf_counter() - started))
            if any(errors):
                raise SystemExit(f"{label}, {name}: {next(e for e in errors if e)}")
    reference = probs[BASE]
    agreement = {name: float((p.argmax(1) == reference.argmax(1)).mean()) for name, p in probs.items()}
    diff = {name: float(np.abs(p - reference).max()) for name, p in probs.items()}
    return {"label": label, "images": len(paths), "batch": batch, "input": tuple(preprocess.input_size),
            "best": best, "agreement": agreement, "diff": diff, "failed": failed, "threads": threads}  # fmt: skip


def rows_for(result: dict[str, Any]) -> list[str]:
    best, batch = result["best"], result["batch"]

    def cell(name: str, key: Any) -> str:
        ratio = best[name, key] / best[BASE, key]
        return f"{best[name, key]:.1f} ({'**' if name != BASE else ''}{ratio:.2f}x{'**' if name != BASE else ''})"

    rows = []
    for name, _, _ in ENGINES:
        if name in result["failed"]:
            rows.append(f"| {result['label']} | {name} | did not load: {result['failed'][name]} | | | | |")
            continue
        rows.append(f"| {result['label']} | {name} | {cell(name, batch)} | {cell(name, 1)} | {cell(name, 'files')} | "
                    f"{result['agreement'][name]:.1%} | {result['diff'][name]:.1e} |")  # fmt: skip
    return rows


def verdicts(result: dict[str, Any]) -> str:
    """One line per model: each goal, met or not, on the batch the CLI uses (the other figures beside it)."""
    best, batch, label = result["best"], result["batch"], result["label"]
    said = []
    for name, goal, check in (("onnxruntime INT8", "int8", "agreement"), ("OpenVINO fp32", "openvino", "diff")):
        if name in result["failed"]:
            said.append(f"{name} did not load")
            continue
        speed, bound = GOALS[goal]
        ratio = best[name, batch] / best[BASE, batch]
        value = result[check][name]
        met = ratio >= speed and (value >= bound if check == "agreement" else value <= bound)
        accuracy = f"top-1 agreement {value:.1%}" if check == "agreement" else f"max |Δp| {value:.1e}"
        said.append(f"{name} {ratio:.2f}x at batch {batch} (batch 1: {best[name, 1] / best[BASE, 1]:.2f}x, end to "
                    f"end: {best[name, 'files'] / best[BASE, 'files']:.2f}x), {accuracy}: "
                    f"**{'met' if met else 'not met'}**")  # fmt: skip
    return f"- {label}: " + "; ".join(said) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite0", "digits"], choices=["lite0", "digits"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-images", type=int, default=100, help="EfficientNet-Lite0's held-out images")
    parser.add_argument("--calibration-images", type=int, default=64, help="EfficientNet-Lite0's calibration images")
    parser.add_argument("--limit", type=int, help="at most this many images in every set (a quick try)")
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import logging

    import onnxruntime
    import torch

    logging.getLogger("cnnapps").setLevel(logging.WARNING)
    onnxruntime.set_default_logger_severity(3)
    try:
        import openvino

        openvino_version = openvino.__version__.split("-")[0]
    except ImportError:
        openvino_version = "not installed"
    results, notes = [], []
    cap = (lambda n: min(n, args.limit)) if args.limit else (lambda n: n)
    with tempfile.TemporaryDirectory(prefix="cnnapps-engines-") as name:
        tmp = Path(name)
        if "lite0" in args.models:
            write_variants(tmp / "lite0-calibrate", CALIBRATION_PHOTOS, cap(args.calibration_images), seed=1)
            write_variants(tmp / "lite0-check", CHECK_PHOTOS, cap(args.check_images), seed=2)
            results.append(measure("efficientnet_lite0", "efficientnet_lite0", tmp / "lite0-calibrate",
                                   tmp / "lite0-check", tmp, args.repeats))  # fmt: skip
            notes.append(f"- efficientnet_lite0 (bundled, ImageNet, 224 px): held out {results[-1]['images']} "
                         f"crops, flips and rescales of {', '.join(CHECK_PHOTOS)}; calibrated on "
                         f"{cap(args.calibration_images)} of {', '.join(CALIBRATION_PHOTOS)} "
                         "(no photo in both).")  # fmt: skip
        if "digits" in args.models:
            if not (DIGITS_MODEL.exists() and (DIGITS_DATA / "train").is_dir() and (DIGITS_DATA / "val").is_dir()):
                print(f"skipping digits: {DIGITS_MODEL.relative_to(ROOT)} or {DIGITS_DATA.relative_to(ROOT)}/train, "
                      f"/val is missing; make them with: {MAKE_DIGITS}")  # fmt: skip
            else:
                calibrate = capped(DIGITS_DATA / "train", args.limit, tmp / "digits-calibrate")
                check = capped(DIGITS_DATA / "val", args.limit, tmp / "digits-check")
                results.append(measure("digits", str(DIGITS_MODEL), calibrate, check, tmp, args.repeats))
                side = results[-1]["input"][1]
                used = min(len(image_paths(calibrate)), 256)
                notes.append(f"- digits ({DIGITS_MODEL.relative_to(ROOT)}, EfficientNet-Lite0 at {side} px): "
                             f"calibrated on {used} images of data/digits/train, held out "
                             f"{results[-1]['images']} of data/digits/val.")  # fmt: skip
    if not results:
        raise SystemExit("nothing measured")
    batch = results[0]["batch"]
    threads = next((r["threads"] for r in results if r["threads"]), None)
    command = f"python benchmarks/engines.py --models {' '.join(args.models)} --repeats {args.repeats}"
    if "lite0" in args.models:
        command += f" --check-images {args.check_images} --calibration-images {args.calibration_images}"
    command += f" --limit {args.limit}" if args.limit else ""
    body = "\n".join([
        f"## {TITLE}",
        "",
        f"`{command}` on {describe_machine('cpu')}; onnxruntime {onnxruntime.__version__} (its default thread pool, "
        "threads sleeping between runs), "
        f"OpenVINO {openvino_version} (INFERENCE_NUM_THREADS {threads or torch.get_num_threads()}: torch's count). "
        "Each model exported as fp32 ONNX and as static INT8 ONNX (QDQ, int8 weights per channel using 7 bits, uint8 "
        "activations calibrated by percentile, fully connected layers fp32); the baseline is the fp32 graph in "
        "onnxruntime, what `--engine onnxruntime` runs. "
        f"images/s: the engine's runner on preprocessed batches of the held-out images at batch {batch} (what "
        "`cnnapps classify` uses on a CPU) and at batch 1 (one image per call), and end to end from the image files "
        f"through `cnnapps.load(file, engine=...).predict_proba` (batch {batch}, decoding and preprocessing "
        f"included); best of {args.repeats} rounds, engines alternating, after a warm-up (the runners' rounds go "
        f"over the images again until {ROUND_SECONDS:g} s have passed); in brackets the ratio to "
        "fp32 onnxruntime. Agreement and the largest change of any probability are against fp32 onnxruntime, on the "
        "held-out images:",
        "",
        *notes,
        "",
        f"| model | engine | images/s, batch {batch} | images/s, batch 1 | images/s end to end, batch {batch} | "
        "top-1 agreement with fp32 | max \\|Δp\\| |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *[row for result in results for row in rows_for(result)],
        "",
        f"Goals: INT8 >= {GOALS['int8'][0]}x the images/s of fp32 onnxruntime with top-1 agreement >= "
        f"{GOALS['int8'][1]:.0%}; OpenVINO >= {GOALS['openvino'][0]}x with probabilities within "
        f"1e-3 of onnxruntime's (judged at batch {batch}).",
        "",
        *[verdicts(result) for result in results],
        "",
    ])  # fmt: skip
    record(TITLE, body, args.write)


if __name__ == "__main__":
    main()
