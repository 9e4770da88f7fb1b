"""Training throughput: a plain torchvision loop against cnnapps' training (``fit``), same model, same device, one run.

Two data sources, each timed for both ways over the same number of steps after the same warm-up:

- ``memory``: a few batches made once and kept on the device, reused every step: what the device can do when
  the data never starves it. Plain: torchvision's model, SGD, the textbook AMP loop (autocast + GradScaler) on a
  GPU. cnnapps: its Classifier (the registry's backbone, dropout, a linear head) in ``ClassificationModule``
  through ``fit`` (Lightning, 16-mixed and channels_last on a GPU).
- ``files``: JPEGs in class folders, decoded and augmented every step (random resized crop 35-100 %, flip,
  colour jitter half the time, normalise). Plain: torchvision's ``ImageFolder`` + PIL + torchvision transforms in
  DataLoader workers, float32 batches. cnnapps: its own loaders as ``cnnapps train classify --augment default``
  builds them (OpenCV + albumentations; on a GPU uint8 batches, jitter and normalisation on the GPU).

    python benchmarks/train_throughput.py [--device auto] [--model resnet50] [--size 224] [--batch-size 64]
        [--steps 50] [--warmup 10] [--workers N] [--sources memory files] [--write]

The defaults are for a GPU; on a CPU they are --batch-size 16 --steps 3 --warmup 1.

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

CLASSES = 10


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_batches(batch_size: int, size: int, device: Any, count: int = 4) -> list[tuple[Any, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch_size, 3, size, size, generator=g).to(device),
         torch.randint(0, CLASSES, (batch_size,), generator=g).to(device))
        for _ in range(count)
    ]  # fmt: skip


class Batches:
    """Ready batches as one loader (a bare list would be taken by Lightning for a list of loaders)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def plain_train(model: Any, batches: Any, device: Any, warmup: int, steps: int) -> float:
    """The textbook loop; ``batches`` yields (images, labels) on the CPU or on the device. Images/s."""
    import torch

    amp = device.type == "cuda"
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    done, started, images = 0, 0.0, 0
    while done < warmup + steps:
        for x, y in batches:
            if done == warmup:
                synchronize(device)
                started, images = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            images += len(y)
            done += 1
            if done == warmup + steps:
                break
    synchronize(device)
    return images / (time.perf_counter() - started)


def timed_module(module: Any, device: Any, warmup: int, steps: int) -> Any:
    """``module`` (a ClassificationModule) made to time training steps ``warmup`` to ``warmup + steps``."""
    base = type(module)

    class Timed(base):  # type: ignore[misc, valid-type]
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if self.global_step == warmup:
                synchronize(device)
                self.clock = [time.perf_counter(), 0]

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if warmup <= self.global_step - 1 < warmup + steps:
                self.clock[1] += len(batch[1])
            if self.global_step == warmup + steps:
                synchronize(device)
                self.images_per_second = self.clock[1] / (time.perf_counter() - self.clock[0])

    module.__class__ = Timed
    return module


def cnnapps_config(out: Path, device: Any, batch_size: int, epochs: int, workers: int | None, **extra: Any) -> Any:
    from cnnapps.apps.classify.config import ClassifyConfig
    from cnnapps.apps.common.config import load_config

    return load_config(
        None, ClassifyConfig, data=str(out / "data"), out=str(out / "run"), weights="none", epochs=epochs,
        batch_size=batch_size, optimizer="sgd", lr=0.01, schedule="none", dropout=0.0, workers=workers, progress=False,
        device=str(device), **extra,
    )  # fmt: skip


def cnnapps_memory(model_name: str, size: int, batch_size: int, device: Any, warmup: int, steps: int,
                   tmp: Path) -> float:  # fmt: skip
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.common.training import Plan, fit
    from cnnapps.backbones import create_backbone
    from cnnapps.runtime import to_channels_last

    config = cnnapps_config(tmp, device, batch_size, 1, 0, backbone=model_name)
    model = Classifier(create_backbone(model_name, weights=None), CLASSES, 0.0)
    if device.type == "cuda":
        model = to_channels_last(model)
    batches = memory_batches(batch_size, size, device)
    train = [batches[i % len(batches)] for i in range(warmup + steps + 1)]  # one epoch covers the timed steps
    module = timed_module(ClassificationModule(model, config), device, warmup, steps)
    plan = Plan(module, Batches(train), Batches(batches[:1]), "benchmark", "val_top1", len(train), 1)
    fit(config, plan, device)
    return module.images_per_second


def cnnapps_files(model_name: str, size: int, batch_size: int, device: Any, warmup: int, steps: int,
                  workers: int | None, tmp: Path) -> float:  # fmt: skip
    from cnnapps.apps.classify.train import _prepare
    from cnnapps.apps.common.training import fit

    config = cnnapps_config(tmp, device, batch_size, 1, workers, backbone=model_name, input_size=size,
                            augment="default")  # fmt: skip
    plan = _prepare(config, device)
    timed_module(plan.module, device, warmup, steps)
    fit(config, plan, device)
    return plan.module.images_per_second


def plain_files(model: Any, folder: Path, size: int, batch_size: int, workers: int, device: Any, warmup: int,
                steps: int) -> float:  # fmt: skip
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(size, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform), batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip
    return plain_train(model, loader, device, warmup, steps)


def write_data(root: Path, images: int) -> None:
    """``images`` training JPEGs (400-800 px, cut from scikit-image's photos) in CLASSES folders, and a small
    validation set."""
    for split, n in (("train", images), ("val", 2 * CLASSES)):
        flat = root / f"{split}-flat"
        flat.mkdir(parents=True)
        make_folder(flat, n, seed=0 if split == "train" else 1)
        for k, path in enumerate(sorted(flat.glob("*.jpg"))):
            target = root / "data" / split / f"c{k % CLASSES}"
            target.mkdir(parents=True, exist_ok=True)
            path.rename(target / path.name)


GPU_DEFAULTS = {"batch_size": 64, "steps": 50, "warmup": 10}
CPU_DEFAULTS = {"batch_size": 16, "steps": 3, "warmup": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50", help="a torchvision model name that the registry also has")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers [default: cnnapps' default]")
    parser.add_argument("--sources", nargs="+", default=["memory", "files"], choices=["memory", "files"])
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import logging

    import torch
    import torchvision

    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.common.training import default_workers

    logging.getLogger("cnnapps").setLevel(logging.WARNING)
    device = torch.device(resolve_device(args.device))
    gpu = device.type == "cuda"
    for name, value in (GPU_DEFAULTS if gpu else CPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    workers = args.workers
    if workers is None:
        workers = default_workers(load_config(None, data="x"), device)
    rows = ["| data | plain torchvision loop (images/s) | cnnapps fit (images/s) | ratio |",
            "| --- | ---: | ---: | ---: |"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for source in args.sources:
            torch.manual_seed(0)
            plain_model = getattr(torchvision.models, args.model)(num_classes=CLASSES)
            if source == "memory":
                batches = memory_batches(args.batch_size, args.size, device)
                plain = plain_train(plain_model, batches, device, args.warmup, args.steps)
                ours = cnnapps_memory(args.model, args.size, args.batch_size, device, args.warmup, args.steps,
                                      root / "memory")  # fmt: skip
                label = "on the device (no loading)"
            else:
                images = args.batch_size * (args.warmup + args.steps + 1)  # one epoch covers the timed steps
                write_data(root / "files", images)
                plain = plain_files(plain_model, root / "files" / "data" / "train", args.size, args.batch_size,
                                    workers, device, args.warmup, args.steps)  # fmt: skip
                ours = cnnapps_files(args.model, args.size, args.batch_size, device, args.warmup, args.steps,
                                     workers, root / "files")  # fmt: skip
                label = f"JPEG files, {workers} workers"
            rows.append(f"| {label} | {plain:.1f} | {ours:.1f} | **{ours / plain:.2f}x** |")
    kind = "GPU" if gpu else "CPU"
    precision = "16-mixed (fp16 autocast)" if gpu else "fp32"
    command = (
        f"python benchmarks/train_throughput.py --device {device.type} --model {args.model} --size {args.size} "
        f"--batch-size {args.batch_size} --steps {args.steps} --warmup {args.warmup} --sources {' '.join(args.sources)}"
    )
    if args.workers is not None:
        command += f" --workers {args.workers}"
    body = "\n".join([
        f"## training throughput ({kind})",
        "",
        f"`{command}` on {describe_machine(str(device))}: {args.model}, {args.size} px, batch {args.batch_size}, "
        f"SGD, {precision}{', channels_last for cnnapps' if gpu else ''}; images/s over {args.steps} steps after "
        f"{args.warmup} warm-up steps. Files: JPEGs of 400-800 px, random resized crop + flip + colour jitter "
        "(p 0.5) + normalise.",
        "",
        *rows,
        "",
    ])  # fmt: skip
    record(f"training throughput ({kind})", body, args.write)


if __name__ == "__main__":
    main()
