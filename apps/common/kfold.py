"""k-fold cross-validation of any task whose table entry says how its data is dealt into folds
(``cnnapps train TASK --kfold K``; :attr:`~cnnapps.apps.tasks.Task.folds`).

The task's data (its training and validation sets pooled) is dealt into K folds, stratified by a group per item
(an image's class; for detection data, the category most of its objects have). Fold i trains on the other K-1
folds and validates on fold i, in OUT/fold-i/, on data written to OUT/fold-i/data/ in a form the task's own reader
takes (class folders of links to the images; COCO JSON files naming the images), so a fold can be retrained or
evaluated alone. OUT/kfold.json holds the per-fold scores with their mean and standard deviation, and
OUT/model.safetensors is a copy of the best fold's model file. OUT/kfold-plan.json records what the folds were made
from: a --resume with other data, k or seed is refused rather than reading back folds of another split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.apps.common.config import (
    KFOLD_TRACES,
    ConfigError,
    TrainConfig,
    check_folds_alike,
    check_out_folder,
    write_config,
)
from cnnapps.datasets.splits import fold_indices
from cnnapps.errors import CnnappsError
from cnnapps.parts import agree_on_plan, make_plan

log = logging.getLogger("cnnapps")
#: what the folds were made from (task, data, k, seed, the images' groups), kept to check a --resume against
PLAN = "kfold-plan.json"
MULTILABEL = "kfold: folds are stratified by one label per image; multi-label data is not split yet"


@dataclass
class FoldSource:
    """What ``--kfold`` deals into folds: one stratum (group) per item, and ``write(train, val, root)``, which
    writes a fold's data under ``root`` (new or empty) and returns the settings that point the task's training
    at it."""

    strata: list[int]
    write: Callable[[list[int], list[int], Path], dict[str, Any]]

    def __len__(self) -> int:
        return len(self.strata)


def labelled_folds(config: TrainConfig) -> FoldSource:
    """Labelled images (class folders or a CSV; train/ and val/ pooled), stratified by class; a fold is written as
    class folders of links (:func:`write_fold_tree`)."""
    images = pooled_images(config.data)
    counts = {name: images.labels.count(i) for i, name in enumerate(images.class_names)}
    few = [name for name, n in counts.items() if n < 2]
    if few:
        raise ConfigError(f"kfold: class {few[0]} has {counts[few[0]]} image; every fold must train on every class "
                          "(two images or more per class)")  # fmt: skip
    bad = [n for n in images.class_names if not n or n.startswith(".") or "/" in n or os.sep in n]
    if bad:
        raise ConfigError(f"kfold: class {bad[0]!r} cannot name a folder of the fold's tree")

    def write(train: list[int], val: list[int], root: Path) -> dict[str, Any]:
        return {"data": str(write_fold_tree(images, train, val, root))}

    return FoldSource(list(images.labels), write)


def pooled_images(data: str | os.PathLike) -> Any:
    """Every labelled image of ``data``, read as training reads it: its train/ and val/ folders together (class
    trees or labels.csv files), or the one tree or CSV. Multi-label data is refused (:data:`MULTILABEL`)."""
    from cnnapps.datasets.folders import LabeledImages, read_labeled, split_folders, train_val_split

    root = Path(data)
    if split_folders(root):
        # multi-label data is found by itself, as in training; a class of val/ alone is pooled as one of train/ is
        train, val = train_val_split(root, multilabel=None, more_classes=True)
        if train.multilabel:
            raise ConfigError(MULTILABEL)
        return LabeledImages(train.paths + val.paths, train.labels + val.labels, val.class_names)
    found = read_labeled(root, multilabel=None)
    if found.multilabel:
        raise ConfigError(MULTILABEL)
    return found


def write_fold_tree(images: Any, train_idx: list[int], val_idx: list[int], root: Path) -> Path:
    """``root``/train and ``root``/val as class folders of links to the images (copies where links are not
    allowed); ``root`` is new or empty (:func:`cross_validate` clears a fold's earlier data)."""
    for part, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            source = Path(images.paths[i]).resolve()
            folder = root / part / images.class_names[images.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{i:06d}-{source.name}"  # the index keeps same-named files of a class apart
            try:
                target.symlink_to(source)
            except OSError:  # e.g. Windows without the privilege
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    return root


def cross_validate(task_name: str, config: TrainConfig, k: int) -> dict[str, Any]:
    """Train ``k`` folds of ``config`` for the task, each in OUT/fold-i; returns (and writes to OUT/kfold.json)
    the per-fold scores, their mean and standard deviation (population), and which fold is kept as
    OUT/model.safetensors. With ``config.resume``, finished folds are read back and an interrupted one resumed."""
    from cnnapps.apps.tasks import TASKS, get_task
    from cnnapps.files import atomic_write

    task = get_task(task_name)
    if not task.folds:
        able = ", ".join(t.name for t in TASKS.values() if t.folds)
        raise ConfigError(f"kfold: {task_name} reads its data its own way; k-fold runs for {able}")
    if k < 2:
        raise ConfigError(f"kfold: must be at least 2, not {k}")
    config.validate()
    if getattr(config, "multilabel", False):
        raise ConfigError(MULTILABEL)
    if config.world_size > 1:
        raise ConfigError("kfold: folds train one after another in one process; leave devices and num_nodes at 1")
    out = check_out_folder(config.out)
    plain = (out / "model.safetensors").exists() or (out / "checkpoints" / "last.ckpt").exists()
    # any trace of an earlier run (a started k-fold run writes its plan, its settings and its folds first)
    started = (*KFOLD_TRACES, "config.yaml")
    if not config.resume and (plain or any(next(out.glob(pattern), None) for pattern in started)):
        raise CnnappsError(f"{out}: already holds a training run; pass another --out, or --resume to continue it")
    if config.resume and plain and not (out / PLAN).exists():  # a run of one model, not of folds: kept as it is
        raise CnnappsError(f"{out}: holds a training run that is not a k-fold one (no {PLAN}); --kfold --resume "
                           "continues only a k-fold run; pass another --out")  # fmt: skip
    if config.resume and not (out / PLAN).exists():
        raise CnnappsError(f"{out}: nothing to resume (no {PLAN})")
    if config.resume:
        check_folds_alike(config)
    items = task.part("folds")(config)
    if k > len(items):
        raise ConfigError(f"kfold: {k} folds of {len(items)} images leave some folds empty; use at most {len(items)}")
    # the folds an earlier run made (what --resume reads back) are these folds: the same data, k and seed
    about = {"task": task_name, "data": _data_named(out / PLAN, config.data), "k": k, "seed": config.seed}
    out.mkdir(parents=True, exist_ok=True)
    agree_on_plan(out / PLAN, make_plan([str(s) for s in items.strata], 1, **about), ConfigError, parts="folds")
    write_config(config, out / "config.yaml")  # what a --resume takes the settings it is not given from
    train = task.part("train")
    folds = fold_indices(items.strata, k, config.seed)
    rows: list[dict[str, Any]] = []
    metric = None
    for i, val_idx in enumerate(folds, start=1):
        fold_out = out / f"fold-{i}"
        held = set(val_idx)
        train_idx = [j for j in range(len(items)) if j not in held]
        done = (fold_out / "metrics.json").is_file() and (fold_out / "model.safetensors").is_file()
        if config.resume and done:
            log.info("fold %d of %d: finished earlier, read from %s", i, k, fold_out / "metrics.json")
            metrics = json.loads((fold_out / "metrics.json").read_text())
        else:
            if (fold_out / "data").exists():  # made from the data, nothing else is kept in it
                shutil.rmtree(fold_out / "data")
            data = items.write(train_idx, val_idx, fold_out / "data")
            resume = config.resume and (fold_out / "checkpoints" / "last.ckpt").is_file()
            log.info("fold %d of %d: training on %d images, validating on %d", i, k, len(train_idx), len(val_idx))
            fold_config = dataclasses.replace(config, **data, out=str(fold_out), resume=resume)
            metrics = train(fold_config)
            if metrics.get("global_rank"):
                return {"global_rank": metrics["global_rank"]}
        metric = metrics["selected_by"]["metric"]
        scores = {key: v for key, v in metrics.items() if key.startswith("val_") and isinstance(v, float)}
        value = metrics["selected_by"]["value"]
        rows.append({"fold": i, "out": str(fold_out), metric: value, **scores, "best_epoch": metrics.get("best_epoch"),
                     "train_images": len(train_idx), "val_images": len(val_idx)})  # fmt: skip
    summary = summarize_folds(rows, metric or "")
    summary.update(task=task_name, k=k, data=str(config.data), seed=config.seed)
    best = summary["best_fold"]
    best_model = out / f"fold-{best}" / "model.safetensors"
    if best_model.is_file():
        atomic_write(out / "model.safetensors", best_model.read_bytes(), overwrite=True)
        summary["model"] = str(out / "model.safetensors")
    atomic_write(out / "kfold.json", json.dumps(summary, indent=2).encode(), overwrite=True)
    return summary


def _data_named(plan: Path, data: Any) -> str:
    """The data as a plan records it: its absolute path, so that a resume may name it another way (from another
    folder); a plan written before recorded it as typed, and keeps that name where it names the same place."""
    place = str(Path(data).resolve())
    recorded = json.loads(plan.read_text()).get("data") if plan.is_file() else None
    if isinstance(recorded, str) and recorded != place and str(Path(recorded).resolve()) == place:
        return recorded
    return place


def summarize_folds(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean and standard deviation (population, as numpy's ``std``) of every score the folds share, and the fold
    with the highest ``metric``."""
    import numpy as np

    keys = [key for key in rows[0] if key.startswith("val_") and all(isinstance(r.get(key), float) for r in rows)]
    mean = {key: float(np.mean([r[key] for r in rows])) for key in keys}
    std = {key: float(np.std([r[key] for r in rows])) for key in keys}
    best = max(rows, key=lambda r: r.get(metric) or 0.0)["fold"]
    return {"metric": metric, "folds": rows, "mean": mean, "std": std, "best_fold": best}
