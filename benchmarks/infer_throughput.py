"""Inference throughput: plain torchvision against cnnapps, same model, same device, one run, in one process.

- ``tensors``: preprocessed batches already on the device. Plain: torchvision's model, eager fp32 under
  ``no_grad``. cnnapps: the same weights in its Classifier through ``prepare_for_inference`` with each engine
  (``eager`` fp32; ``auto``: the fused TorchScript graph on a CPU, fp16 autocast + channels_last on a GPU;
  ``jit``; ``compile``: torch.compile, its compile time reported; ``onnx-cuda``: the graph exported in memory in
  onnxruntime's CUDA provider, the batch bound where it is). Two more ways for ONNX rows: ``onnx-cuda-fp16`` (the
  graph as ``cnnapps export --fp16`` converts it) and ``onnx-cuda-host`` (onnxruntime's plain run, the batch copied
  to the host and back: what I/O binding saves).
- ``files``: end to end from JPEG files to class probabilities. Plain: PIL + torchvision transforms (resize,
  centre crop, normalise) in DataLoader workers, float32 batches to the device, eager fp32. cnnapps:
  ``ClassificationPredictor.predict_proba(paths)`` with its defaults there (on a GPU: OpenCV decode in threads,
  uint8 to the GPU, resize and normalise there, fp16 autocast).

    python benchmarks/infer_throughput.py [--device auto] [--model resnet50] [--batch-size 256] [--steps 20]
        [--images 2000] [--engines eager auto jit compile] [--sources tensors files] [--write]

The defaults are for a GPU; on a CPU they are --batch-size 16 --steps 3 --images 128 --engines eager auto.

``--write`` records the table in benchmarks/RESULTS.md, in a section per kind of device (CPU, GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from classify_throughput import make_folder
from recording import describe_machine, record, resolve_device
from train_throughput import synchronize


def per_second(run: Any, x: Any, device: Any, steps: int) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(2):  # warm-up: allocator, cudnn's algorithm choice
            run(x)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            run(x)
        synchronize(device)
    return steps * len(x) / (time.perf_counter() - started)


class PlainFiles:
    """The torchvision way to read a folder: PIL, resize, centre crop, to tensor, normalise."""

    def __init__(self, paths: list[str], spec: Any) -> None:
        from torchvision import transforms as T

        self.paths = paths
        self.transform = T.Compose([
            T.Resize(spec.resize), T.CenterCrop(spec.input_size[1]), T.ToTensor(), T.Normalize(spec.mean, spec.std)
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def plain_files(model: Any, paths: list[str], spec: Any, batch_size: int, workers: int, device: Any) -> float:
    import torch

    loader = torch.utils.data.DataLoader(PlainFiles(paths, spec), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")  # fmt: skip
    started = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            model(x.to(device, non_blocking=True)).softmax(1).cpu()
    return len(paths) / (time.perf_counter() - started)


#: ways to run the ONNX graph besides the engines themselves, for the rows that say what each part is worth
ONNX_WAYS = {
    "onnx-cuda-fp16": "engine `onnx-cuda` on the `--fp16` export",
    "onnx-cuda-host": "engine `onnx-cuda`, the batch through the host (onnxruntime's plain run, no I/O binding)",
}


def onnx_way(way: str, backbone: Any, x: Any, device: Any) -> tuple[Any, str]:
    """A runner for one of :data:`ONNX_WAYS` and its row's words."""
    from cnnapps.exported import OnnxRunner, _as_tensors, _numpy_batch, onnx_bytes
    from cnnapps.quantize import to_fp16

    graph = onnx_bytes(backbone, tuple(x.shape[1:]))
    runner = OnnxRunner(to_fp16(graph) if way == "onnx-cuda-fp16" else graph, device, "onnx-cuda")
    if way == "onnx-cuda-fp16":
        return runner, ONNX_WAYS[way]

    def through_host(batch: Any) -> Any:
        return _as_tensors(runner.session.run(None, {runner.input: _numpy_batch(batch)}), batch.device)

    return through_host, ONNX_WAYS[way]


GPU_DEFAULTS = {"batch_size": 256, "steps": 20, "images": 2000, "engines": ["eager", "auto", "jit", "compile"]}
CPU_DEFAULTS = {"batch_size": 16, "steps": 3, "images": 128, "engines": ["eager", "auto"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50", help="a torchvision model name that the registry also has")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--images", type=int, help="JPEG files for the end-to-end rows")
    parser.add_argument("--engines", nargs="+", help="engines (`cnnapps models --engines`) and " + ", ".join(ONNX_WAYS))
    parser.add_argument("--sources", nargs="+", default=["tensors", "files"], choices=["tensors", "files"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds, the ways alternating; the best of each counts")
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import logging

    import torch
    import torchvision

    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.batching import default_decode_workers
    from cnnapps.backbones import create_backbone
    from cnnapps.runtime import prepare_for_inference

    logging.getLogger("cnnapps").setLevel(logging.WARNING)
    device = torch.device(resolve_device(args.device))
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.manual_seed(0)
    plain = getattr(torchvision.models, args.model)().eval()
    with tempfile.TemporaryDirectory() as tmp:  # the registry's net (torchvision's, regrouped), same weights
        torch.save(plain.state_dict(), Path(tmp) / "weights.pth")
        backbone = create_backbone(args.model, weights=str(Path(tmp) / "weights.pth")).eval()
    spec = backbone.preprocess
    rows = ["| input | way | images/s | vs plain |", "| --- | --- | ---: | ---: |"]
    notes = []
    if "tensors" in args.sources:
        x = torch.randn(args.batch_size, *spec.input_size).to(device)
        ways = {"plain: torchvision eager fp32": plain.to(device)}
        for engine in args.engines:
            run, way = onnx_way(engine, backbone, x, device) if engine in ONNX_WAYS else (None, f"engine `{engine}`")
            ways[f"cnnapps {way}"] = run = run or prepare_for_inference(backbone, torch.zeros_like(x), device, engine)
            if hasattr(run, "compile_seconds"):
                notes.append(f"`compile` compiled in {run.compile_seconds:.1f} s (not counted in its images/s).")
        best = dict.fromkeys(ways, 0.0)
        for _ in range(args.repeats):  # alternating: a machine busier in one stretch weighs on every way
            for way, run in ways.items():
                best[way] = max(best[way], per_second(run, x, device, args.steps))
        base = best["plain: torchvision eager fp32"]
        for way, got in best.items():
            rows.append(f"| tensors on the device | {way} | {got:.1f} | " +
                        ("1.00x |" if way.startswith("plain") else f"**{got / base:.2f}x** |"))  # fmt: skip
        del ways, run
        plain.cpu()
    if "files" in args.sources:
        workers = default_decode_workers(device)
        with tempfile.TemporaryDirectory() as tmp:
            make_folder(Path(tmp), args.images)
            paths = sorted(str(p) for p in Path(tmp).glob("*.jpg"))
            member = LoadedClassifier(args.model, backbone, [str(i) for i in range(1000)], spec)
            predictor = ClassificationPredictor([member], device=str(device))
            plain.to(device)
            plain_files(plain, paths[: 2 * args.batch_size], spec, args.batch_size, workers, device)  # warm-up
            predictor.predict_proba(paths[: 2 * predictor.batch_size])  # warm-up
            base = got = 0.0
            for _ in range(args.repeats):
                base = max(base, plain_files(plain, paths, spec, args.batch_size, workers, device))
                started = time.perf_counter()
                predictor.predict_proba(paths)
                got = max(got, len(paths) / (time.perf_counter() - started))
            plain.cpu()
        rows.append(f"| {args.images} JPEG files | plain: PIL + torchvision transforms, {workers} DataLoader workers, "
                    f"eager fp32, batch {args.batch_size} | {base:.1f} | 1.00x |")  # fmt: skip
        rows.append(f"| {args.images} JPEG files | cnnapps `predict_proba` (defaults: {workers} decode threads, "
                    f"batch {predictor.batch_size}) | {got:.1f} | **{got / base:.2f}x** |")  # fmt: skip
    kind = "GPU" if device.type == "cuda" else "CPU"
    command = (
        f"python benchmarks/infer_throughput.py --device {device.type} --model {args.model} --batch-size "
        f"{args.batch_size} --steps {args.steps} --images {args.images} --engines {' '.join(args.engines)} "
        f"--sources {' '.join(args.sources)} --repeats {args.repeats}"
    )
    body = "\n".join([
        f"## inference throughput ({kind})",
        "",
        f"`{command}` on {describe_machine(str(device))}: {args.model} ({spec.input_size[1]} px), random weights "
        f"(the same in both ways), batch {args.batch_size} for tensors, {args.steps} timed batches after 2 warm-up "
        "ones; files: JPEGs of 400-800 px, from reading them to probabilities on the host, each way warmed up on two "
        f"batches; best of {args.repeats} rounds, the ways alternating.",
        "",
        *rows,
        "",
        *notes,
        *([""] if notes else []),
    ])  # fmt: skip
    record(f"inference throughput ({kind})", body, args.write)


if __name__ == "__main__":
    main()
