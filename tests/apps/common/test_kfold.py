"""k-fold cross-validation (``cnnapps train classify|retrieve|detect|segment|pose --kfold K``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.common.kfold import MULTILABEL, cross_validate, pooled_images
from cnnapps.datasets.splits import fold_indices


def test_folds_are_disjoint_cover_everything_and_are_stratified() -> None:
    labels = [0] * 10 + [1] * 6 + [2] * 3
    folds = fold_indices(labels, 3, seed=1)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(len(labels)))  # disjoint and covering
    for group, size in ((0, 10), (1, 6)):
        counts = [sum(labels[i] == group for i in fold) for fold in folds]
        assert max(counts) - min(counts) <= 1 and sum(counts) == size
    assert fold_indices(labels, 3, seed=1) == folds  # repeatable


def _images(tree: Path) -> set[str]:
    return {os.path.realpath(p) for p in tree.rglob("*.png")}


def test_two_folds_on_the_command_line(colour_set: Path, tmp_path: Path, run_cli) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(dict(
        data=str(colour_set), backbone="lenet5", weights="none", epochs=1, batch_size=8, lr=0.01, workers=0,
        augment="none", dropout=0.0, backbone_kwargs={"in_channels": 3},
    )))  # fmt: skip
    out = tmp_path / "cv"
    code, stdout, stderr = run_cli("train", "classify", "--config", base, "--kfold", 2, "--out", out)
    assert code == 0, stderr
    assert "mean ± std" in stdout and "kfold.json" in stdout
    folds = [json.loads((out / f"fold-{i}" / "metrics.json").read_text()) for i in (1, 2)]
    assert [m["epochs"] for m in folds] == [1, 1]
    val = [_images(out / f"fold-{i}" / "data" / "val") for i in (1, 2)]
    train = [_images(out / f"fold-{i}" / "data" / "train") for i in (1, 2)]
    everything = _images(colour_set)
    assert len(everything) == 30 and not val[0] & val[1] and val[0] | val[1] == everything
    assert train[0] == val[1] and train[1] == val[0]
    assert [m["val_images"] for m in folds] == [15, 15]
    summary = json.loads((out / "kfold.json").read_text())
    assert summary["metric"] == "val_top1" and summary["k"] == 2
    scores = [m["val_top1"] for m in folds]
    assert [row["val_top1"] for row in summary["folds"]] == scores
    assert summary["mean"]["val_top1"] == pytest.approx(np.mean(scores))
    assert summary["std"]["val_top1"] == pytest.approx(np.std(scores))
    best = summary["best_fold"]
    assert scores[best - 1] == max(scores)
    assert (out / "model.safetensors").read_bytes() == (out / f"fold-{best}" / "model.safetensors").read_bytes()
    code, _, stderr = run_cli("train", "classify", "--config", base, "--kfold", 2, "--out", out)
    assert code != 0 and "already holds a training run" in stderr
    # a resume with another k (or seed, or data) would read back folds of another split as its own: refused
    kept = (out / "kfold.json").read_bytes()
    code, _, stderr = run_cli("train", "classify", "--config", base, "--kfold", 3, "--out", out, "--resume")
    assert code == 2 and "the folds here were started with another k" in stderr, stderr
    assert (out / "kfold.json").read_bytes() == kept and not (out / "fold-3").exists()


def test_a_kfold_resume_keeps_the_settings_the_run_was_given(colour_set: Path, tmp_path: Path, run_cli) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(dict(data=str(colour_set), backbone="lenet5", weights="none", epochs=1,
                                        batch_size=8, workers=0, backbone_kwargs={"in_channels": 3})))  # fmt: skip
    out = tmp_path / "cv"
    code, _, stderr = run_cli("train", "classify", "--config", base, "--augment", "none", "--kfold", 2, "--out", out)
    assert code == 0, stderr
    (out / "fold-2" / "metrics.json").unlink()  # as if stopped in the second fold
    code, _, stderr = run_cli("train", "classify", "--config", base, "--kfold", 2, "--out", out, "--resume")
    assert code == 0, stderr  # --augment none is the run's: not a change to refuse
    assert yaml.safe_load((out / "fold-2" / "config.yaml").read_text())["augment"] == "none"
    assert (out / "fold-2" / "metrics.json").is_file()


def test_a_kfold_run_of_an_older_version_resumes_with_its_first_folds_settings(colour_set: Path, tmp_path: Path,
                                                                               run_cli) -> None:  # fmt: skip
    """A k-fold run of an older version holds config.yaml in its folds alone: a --resume takes the settings it is
    not given from the first fold's (but its data, which that fold reads from its own copy); one given otherwise is
    refused naming that file, before anything is written."""
    out = tmp_path / "cv"
    tiny = ("--backbone", "lenet5", "--weights", "none", "--epochs", 1, "--batch-size", 8, "--workers", 0,
            "--augment", "none")  # fmt: skip
    code, _, stderr = run_cli("train", "classify", "--data", colour_set, *tiny, "--kfold", 2, "--out", out)
    assert code == 0, stderr
    (out / "config.yaml").unlink()
    (out / "fold-2" / "metrics.json").unlink()  # as if stopped in the second fold
    code, _, stderr = run_cli("train", "classify", "--data", colour_set, "--backbone", "resnet18", "--kfold", 2,
                              "--out", out, "--resume")  # fmt: skip
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: backbone: the run in {out} trains with 'lenet5', not 'resnet18'")
    assert f"({out / 'fold-1' / 'config.yaml'}): leave backbone out" in lines[0]
    assert not (out / "config.yaml").exists() and not (out / "fold-2" / "metrics.json").exists()
    code, _, stderr = run_cli("train", "classify", "--data", colour_set, "--kfold", 2, "--out", out, "--resume")
    assert code == 0, stderr
    assert (out / "fold-2" / "metrics.json").is_file()
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert (settings["data"], settings["backbone"], settings["augment"]) == (str(colour_set), "lenet5", "none")


def test_kfold_refusals(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    config = tiny_config(colour_set, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"^kfold: caption reads its data its own way"):
        cross_validate("caption", config, 2)
    with pytest.raises(ConfigError, match=r"^kfold: must be at least 2, not 1"):
        cross_validate("classify", config, 1)
    with pytest.raises(ConfigError, match=r"^kfold: 31 folds of 30 images"):
        cross_validate("classify", config, 31)
    # multi-label data found by itself (a row with two labels), as training finds it: refused, not read as one
    # class per label combination
    rows = ["path,labels"] + [f"{p},{p.parent.name}" for p in sorted(colour_set.rglob("*.png"))]
    rows[1] += "|red"
    (tmp_path / "tags.csv").write_text("\n".join(rows))
    with pytest.raises(ConfigError, match=r"^kfold: folds are stratified by one label per image"):
        cross_validate("classify", tiny_config(tmp_path / "tags.csv", tmp_path / "y"), 2)
    assert not (tmp_path / "y").exists()


def test_train_and_val_with_labels_csv_are_pooled_as_training_reads_them(tmp_path: Path) -> None:
    """train/ + val/ each holding a labels.csv (which plain training takes): pooled; multi-label ones refused with
    the multi-label message, also when only val/ has a row with two labels."""
    for part, text in (("train", "a.png,cat\nb.png,dog\nc.png,cat\n"), ("val", "d.png,dog\n")):
        (tmp_path / part).mkdir()
        (tmp_path / part / "labels.csv").write_text("path,label\n" + text)
        for row in text.splitlines():
            (tmp_path / part / row.split(",")[0]).write_bytes(b"")
    pooled = pooled_images(tmp_path)
    assert not pooled.multilabel and pooled.class_names == ["cat", "dog"] and pooled.labels == [0, 1, 0, 1]
    assert [Path(p).name for p in pooled.paths] == ["a.png", "b.png", "c.png", "d.png"]
    (tmp_path / "val" / "labels.csv").write_text("path,labels\nd.png,cat|dog\n")
    with pytest.raises(ConfigError, match=f"^{MULTILABEL}$"):
        pooled_images(tmp_path)


def test_detection_folds_pool_train_and_val_and_write_coco_files(tmp_path: Path) -> None:
    """Segmentation data in two COCO files: the folds pool both (ids renumbered, images named by absolute path,
    every annotation kept once), train on K-1 folds, validate on the other, and summarise the mask AP."""
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.datasets.synthetic import write_coco

    data = tmp_path / "shapes"
    write_coco("shapes", data, "train", 6, seed=0, size=96)
    write_coco("shapes", data, "val", 4, seed=1, size=96)
    sources = [json.loads((data / f"{part}.json").read_text()) for part in ("train", "val")]
    config = load_config(
        None, DetectConfig, task="segment", data=str(data / "train.json"), images=str(data / "train"),
        val_data=str(data / "val.json"), val_images=str(data / "val"), backbone="resnet18", weights="none",
        fpn_channels=16, min_size=96, max_size=96, epochs=1, batch_size=4, workers=0, progress=False,
        augment="none", out=str(tmp_path / "cv"),
    )  # fmt: skip
    summary = cross_validate("segment", config, 2)
    folds = [{part: json.loads((tmp_path / "cv" / f"fold-{i}" / "data" / f"{part}.json").read_text())
              for part in ("train", "val")} for i in (1, 2)]  # fmt: skip
    files = lambda coco: {im["file_name"] for im in coco["images"]}  # noqa: E731
    everything = {str((data / part / im["file_name"]).resolve()) for part, src in zip(("train", "val"), sources,
                                                                                       strict=True)
                  for im in src["images"]}  # fmt: skip
    assert len(everything) == 10 and all(Path(f).is_absolute() and Path(f).is_file() for f in everything)
    assert files(folds[0]["val"]) | files(folds[1]["val"]) == everything
    assert not files(folds[0]["val"]) & files(folds[1]["val"])
    assert files(folds[0]["train"]) == files(folds[1]["val"]) and files(folds[1]["train"]) == files(folds[0]["val"])
    total = sum(len(src["annotations"]) for src in sources)
    assert sum(len(f["val"]["annotations"]) for f in folds) == total
    for fold in folds:  # within a file: ids unique, each annotation on one of its images, the categories kept
        for coco in fold.values():
            ids = {im["id"] for im in coco["images"]}
            assert len(ids) == len(coco["images"]) and all(a["image_id"] in ids for a in coco["annotations"])
            assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
            assert coco["categories"] == sources[0]["categories"]
    metric = summary["metric"]
    assert summary["k"] == 2 and [row["val_images"] for row in summary["folds"]] == [5, 5]
    scores = [row[metric] for row in summary["folds"]]
    assert summary["mean"][metric] == pytest.approx(np.mean(scores))
    best = summary["best_fold"]
    assert (tmp_path / "cv" / "model.safetensors").read_bytes() == (
        tmp_path / "cv" / f"fold-{best}" / "model.safetensors"
    ).read_bytes()


def test_a_kfold_resume_may_name_its_data_another_way(colour_set: Path, tmp_path: Path, run_cli,
                                                      monkeypatch) -> None:  # fmt: skip
    """The plan records the data's absolute path: a resume from another folder, naming it relatively, continues;
    a plan written before, which recorded the data as typed, is still resumed with that name."""
    out = tmp_path / "cv"
    tiny = ("--backbone", "lenet5", "--weights", "none", "--epochs", 1, "--batch-size", 8, "--workers", 0,
            "--augment", "none", "--kfold", 2, "--out", out)  # fmt: skip
    monkeypatch.chdir(colour_set.parent)
    code, _, stderr = run_cli("train", "classify", "--data", colour_set.name, *tiny)
    assert code == 0, stderr
    plan = json.loads((out / "kfold-plan.json").read_text())
    assert plan["data"] == str(colour_set.resolve())
    (out / "fold-2" / "metrics.json").unlink()  # as if stopped in the second fold
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("train", "classify", "--data", os.path.relpath(colour_set, tmp_path), *tiny, "--resume")
    assert code == 0, stderr
    assert (out / "fold-2" / "metrics.json").is_file()
    # a plan of an earlier version, the data as typed in the data's parent folder
    (out / "kfold-plan.json").write_text(json.dumps({**plan, "data": colour_set.name}))
    (out / "fold-2" / "metrics.json").unlink()
    monkeypatch.chdir(colour_set.parent)
    code, _, stderr = run_cli("train", "classify", "--data", str(colour_set), *tiny, "--resume")
    assert code == 0, stderr
    assert json.loads((out / "kfold-plan.json").read_text())["data"] == colour_set.name
    # a copy in another folder is another data set
    shutil.copytree(colour_set, tmp_path / "copy")
    code, _, stderr = run_cli("train", "classify", "--data", tmp_path / "copy", *tiny, "--resume")
    assert code == 2 and "the folds here were started with another data" in stderr, stderr


def test_a_class_of_val_alone_is_pooled_with_the_others(tmp_path: Path) -> None:
    """train/ + val/ with a class in val/ alone (metric learning's unseen classes) was refused as "not among the
    training classes": folds pool every image, so it is a class as the others are."""
    from tests.conftest import write_colour_set

    write_colour_set(tmp_path / "data" / "train", per_class=2)
    write_colour_set(tmp_path / "data" / "val", per_class=1)
    shutil.move(tmp_path / "data" / "val" / "red", tmp_path / "data" / "val" / "purple")
    shutil.rmtree(tmp_path / "data" / "train" / "red")
    pooled = pooled_images(tmp_path / "data")
    assert pooled.class_names == ["blue", "green", "purple"]
    assert sorted(pooled.class_names[label] for label in pooled.labels) == ["blue"] * 3 + ["green"] * 3 + ["purple"]
