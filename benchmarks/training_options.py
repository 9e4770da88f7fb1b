"""Training options on scikit-learn's digits: class weights and the balanced sampler on an imbalanced set, and
MixUp / CutMix / RandAugment / EMA with few images per class.

Two studies, each configuration over ``--seeds`` seeds (mean and spread, min-max), on the digits recipe
(configs/classify/digits.yaml: EfficientNet-Lite0 from ImageNet at 64 px, ``creative`` augmentation):

- imbalanced: the training set with classes 0-4 keeping 10 % of their images (classes 5-9 all of theirs); the
  validation set untouched (36 per class). Balanced accuracy (mean per-class recall) of: default,
  ``--class-weights auto``, ``--sampler balanced``, ``--logit-adjust 1`` (the logit-adjusted loss).
- few images: 100 training images per class; validation top-1 of: default, ``--mix mixup``, ``--mix cutmix``,
  ``--augment randaugment`` (its random resized crop and flip replace ``creative``), ``--ema``.

    python benchmarks/training_options.py [--studies imbalanced few] [--epochs 8] [--seeds 3] [--write]
    python benchmarks/training_options.py --epochs 1 --seeds 1 --only default   # a smoke test
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import describe_machine, record  # noqa: E402

IMBALANCED = {
    "default": {},
    "class weights auto": {"class_weights": "auto"},
    "sampler balanced": {"sampler": "balanced"},
    "logit adjusted": {"logit_adjust": 1.0},
}
FEW_IMAGES = {
    "default": {},
    "mix mixup": {"mix": "mixup"},
    "mix cutmix": {"mix": "cutmix"},
    "augment randaugment": {"augment": "randaugment"},
    "ema": {"ema": True},
}


def make_sets(root: Path, seed: int = 0) -> dict[str, Path]:
    """``root/full`` (the digits), ``root/imbalanced`` and ``root/few`` (their training subsets, the same val)."""
    import numpy as np

    from cnnapps.datasets.digits import export_digits

    full = root / "full"
    if not full.exists():
        export_digits(full)
    rng = np.random.default_rng(seed)
    sets = {}
    for name, keep in (("imbalanced", lambda digit, n: max(1, round(0.1 * n)) if digit < 5 else n),
                       ("few", lambda digit, n: min(100, n))):  # fmt: skip
        target = root / name
        if not target.exists():
            for folder in sorted((full / "train").iterdir()):
                files = sorted(folder.iterdir())
                chosen = rng.choice(len(files), keep(int(folder.name), len(files)), replace=False)
                (target / "train" / folder.name).mkdir(parents=True)
                for i in sorted(chosen):
                    shutil.copy(files[i], target / "train" / folder.name / files[i].name)
            shutil.copytree(full / "val", target / "val")
        sets[name] = target
    return sets


def run(data: Path, out: Path, seed: int, args: argparse.Namespace, options: dict[str, Any]) -> dict[str, float]:
    from cnnapps.apps.classify.config import ClassifyConfig
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.config import load_config

    recipe = HERE.parent / "configs" / "classify" / "digits.yaml"
    settings = {"data": str(data), "out": str(out), "seed": seed, "epochs": args.epochs, "progress": False,
                "backbone": args.backbone, "weights": args.weights, "device": args.device, **options}  # fmt: skip
    started = time.perf_counter()
    metrics = train_classifier(load_config(recipe, ClassifyConfig, **settings))
    recalls = [row["recall"] for row in metrics["per_class"].values()]
    return {"top1": metrics["val_top1"], "balanced": sum(recalls) / len(recalls),
            "seconds": time.perf_counter() - started}  # fmt: skip


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def verdict(study: str, means: dict[str, float]) -> str:
    """The study's goal against the default's mean: imbalanced +5 points of balanced accuracy, few +1 top-1."""
    need = GOALS[study]
    base = means.get("default")
    others = {name: mean for name, mean in means.items() if name != "default"}
    if base is None or not others:
        return "Goal: not judged (the default and at least one option are needed)."
    best = max(others, key=others.get)
    gain = 100 * (others[best] - base)
    gains = ", ".join(f"{name} {100 * (mean - base):+.1f}" for name, mean in others.items())
    met = "met" if gain >= need else "not met"
    return (f"Goal: +{need:g} points over the default's {100 * base:.1f} %: **{met}** (best: {best}, "
            f"{100 * others[best]:.1f} %; gains over the default: {gains}).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="Epochs per run (the digits recipe: 8).")
    parser.add_argument("--seeds", type=int, default=3, help="Runs per configuration (seeds 0, 1, ...).")
    parser.add_argument("--studies", nargs="+", choices=tuple(STUDIES), default=list(STUDIES),
                        help="Which studies to run (each is recorded as its own section).")  # fmt: skip
    parser.add_argument("--only", nargs="*", help="Only these configurations (e.g. default 'ema').")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", help="Keep the data sets and runs here [default: a temporary folder].")
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()

    from cnnapps.runtime import select_device

    device = str(select_device(args.device))
    flags = "".join(f" --{k} {v}" for k, v in (("backbone", args.backbone), ("weights", args.weights))
                    if v != parser.get_default(k))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        sets = make_sets(root)
        for study in args.studies:
            title, score, configs, about = STUDIES[study]
            lines = [f"| {score_name(score)} % | mean (min-max) | seconds per run |", "| --- | --- | --- |"]
            means = {}
            for name, options in configs.items():
                if args.only and name not in args.only:
                    continue
                results = []
                for seed in range(args.seeds):
                    out = root / "runs" / study / name.replace(" ", "-") / f"seed{seed}"
                    shutil.rmtree(out, ignore_errors=True)
                    results.append(run(sets[study], out, seed, args, options))
                    print(f"{study} / {name} / seed {seed}: {results[-1]}", flush=True)
                seconds = sum(r["seconds"] for r in results) / len(results)
                means[name] = sum(r[score] for r in results) / len(results)
                lines.append(f"| {name} | {spread([r[score] for r in results])} | {seconds:.0f} |")
            body = (
                f"## {title}\n\n"
                f"`python benchmarks/training_options.py --studies {study} --epochs {args.epochs} --seeds "
                f"{args.seeds}{flags}`: {args.backbone} ({args.weights}) at 64 px, the digits recipe, {args.seeds} "
                f"seeds per configuration, one run after the other. {about}\nMeasured on {describe_machine(device)}."
                "\n\n" + "\n".join(lines) + "\n\n" + verdict(study, means) + "\n"
            )
            record(title, body, args.write)


def score_name(score: str) -> str:
    return "balanced accuracy" if score == "balanced" else "top-1"


#: study -> (RESULTS.md section, score, configurations, what the data is)
STUDIES = {
    "imbalanced": ("training options on digits: imbalanced classes", "balanced", IMBALANCED,
                   "Classes 0-4 keep 10 % of their training images (14-15 each, classes 5-9 139-145); the validation "
                   "set is untouched (36 per class); the score is balanced accuracy (mean per-class recall)."),
    "few": ("training options on digits: few images", "top1", FEW_IMAGES,
            "100 training images per class; the validation set is untouched (36 per class)."),
}  # fmt: skip
GOALS = {"imbalanced": 5.0, "few": 1.0}


if __name__ == "__main__":
    main()
