"""Multi-label classification: reading path,labels data, thresholds tuned for F1, training, model files, prediction
(Python, command line, a shared trunk pass) and evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cnnapps
from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.classify.multilabel import multilabel_report, tune_thresholds
from cnnapps.apps.common.config import ConfigError, load_config
from cnnapps.datasets.folders import DatasetError, MultiLabeledImages, labeled_csv, read_labeled, train_val_split
from cnnapps.errors import CnnappsError

COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
LABEL_SETS = [("red",), ("green",), ("blue",), ("red", "green"), ("red", "blue"), ("green", "blue")]


def write_tagged_set(root: Path, n: int = 36, seed: int = 0) -> Path:
    """40x40 PNGs with one or two coloured bars (their colours are the image's labels) and a labels.csv of them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(n):
        labels = LABEL_SETS[i % len(LABEL_SETS)]
        img = np.full((40, 40, 3), 128, np.uint8)
        for k, name in enumerate(labels):
            img[8:32, 2 + 20 * k : 18 + 20 * k] = COLOURS[name]
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"{i:02d}.png"), img[:, :, ::-1])
        rows.append(f"{i:02d}.png,{'|'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def multilabel_config(data: Path | str, out: Path | str, **overrides) -> ClassifyConfig:
    settings = dict(
        data=str(data), backbone="lenet5", weights="none", epochs=2, batch_size=8, lr=0.01, workers=0,
        progress=False, augment="none", out=str(out), val_split=0.3, dropout=0.0, backbone_kwargs={"in_channels": 3},
    )  # fmt: skip
    settings.update(overrides)
    return load_config(None, ClassifyConfig, **settings)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tagged_set(tmp_path_factory.mktemp("tagged") / "images")


@pytest.fixture(scope="module")
def multilabel_run(tagged: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two epochs of LeNet-5 on the tagged set, found multi-label from its labels.csv: (model file, metrics)."""
    from cnnapps.apps.classify.train import train_classifier

    out = tmp_path_factory.mktemp("runs") / "tagged"
    metrics = train_classifier(multilabel_config(tagged, out))
    return out / "model.safetensors", metrics


# -- reading the data ---------------------------------------------------------------------------------------------
def test_csv_with_several_labels_and_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tags.csv").write_text(
        "path,labels\n"
        "a.jpg,cat|dog\n"
        "just-a-path.jpg\n"  # line 3: no label column
        "b.jpg,dog; bird \n"
        ",cat\n"  # line 5: no path
        "c.jpg,\n"  # an image with none of the labels
        "d.jpg,cat|cat\n"
    )
    for name in "abcd":
        (tmp_path / f"{name}.jpg").write_bytes(b"")  # listed images are there (their content is read later)
    with caplog.at_level(logging.WARNING, logger="cnnapps"):
        data = labeled_csv(tmp_path / "tags.csv", multilabel=None)
    assert isinstance(data, MultiLabeledImages) and data.multilabel
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.paths == [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]
    assert data.labels == [(1, 2), (2, 0), (), (1,)]
    assert data.target(0).tolist() == [0.0, 1.0, 1.0] and data.target(2).tolist() == [0.0, 0.0, 0.0]
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2 and all("\n" not in m and m.endswith("row skipped") for m in skipped)
    assert skipped[0].startswith(f"{tmp_path / 'tags.csv'}:3: expected 'path,label'")
    assert skipped[1].startswith(f"{tmp_path / 'tags.csv'}:5: ")
    # a model's classes fix the order; labels it does not know are an error
    assert labeled_csv(tmp_path / "tags.csv", ["dog", "cat", "bird"], multilabel=True).labels[0] == (1, 0)
    with pytest.raises(DatasetError, match="labels bird are not among the training classes"):
        labeled_csv(tmp_path / "tags.csv", ["cat", "dog"], multilabel=True)


def test_one_label_per_row_stays_single_label_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("path,label\na.jpg,cat\nb.jpg,dog\n")
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    single = labeled_csv(tmp_path / "one.csv", multilabel=None)
    assert not single.multilabel and single.labels == [0, 1]
    forced = read_labeled(tmp_path / "one.csv", multilabel=True)
    assert forced.multilabel and forced.labels == [(0,), (1,)]
    (tmp_path / "bad.csv").write_text("only-a-path.jpg\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: no usable rows \(.*bad\.csv:1: expected 'path,label'"):
        labeled_csv(tmp_path / "bad.csv", multilabel=None)


def test_a_folder_with_labels_csv_is_split_by_rarest_label(tagged: Path) -> None:
    with pytest.raises(DatasetError, match="no images found in class sub-folders"):
        read_labeled(tagged)  # single-label readers (retrieval) do not look for labels.csv
    train, val = train_val_split(tagged, 0.3, 0, multilabel=None)
    assert train.multilabel and len(train) + len(val) == 36 and not set(train.paths) & set(val.paths)
    assert all(count > 0 for count in val.counts())  # every label is in the validation half


def test_train_and_val_folders_with_labels_csv(tmp_path: Path) -> None:
    for part, text in (("train", "a.png,cat|dog\nb.png,dog\n"), ("val", "c.png,dog\n")):
        (tmp_path / part).mkdir()
        (tmp_path / part / "labels.csv").write_text(text)
        for row in text.splitlines():
            (tmp_path / part / row.split(",")[0]).write_bytes(b"")
    train, val = train_val_split(tmp_path, multilabel=None)
    assert (train.multilabel, val.multilabel) == (True, True)  # val has one label per row: it follows train
    assert train.class_names == val.class_names == ["cat", "dog"] and val.labels == [(1,)]


# -- thresholds and metrics ----------------------------------------------------------------------------------------
def test_thresholds_are_each_class_best_f1() -> None:
    probs = np.array([[0.9, 0.2, 0.7], [0.8, 0.6, 0.1], [0.4, 0.3, 0.2], [0.35, 0.65, 0.3], [0.1, 0.1, 0.05]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    thresholds = tune_thresholds(probs, targets)
    # class 0: positives 0.9, 0.8, 0.35 with a negative at 0.4 between: all three (F1 6/7) beats two (F1 4/5);
    # halfway between 0.35 and the next lower score, 0.1. Class 1: 0.65 and 0.6 are its positives, above every
    # negative (F1 1): halfway to 0.3. Class 2 has no positive: 0.5.
    assert thresholds == pytest.approx([0.225, 0.45, 0.5])

    def f1(c: int, t: float) -> float:
        called, truth = probs[:, c] >= t, targets[:, c] == 1
        return 2 * (called & truth).sum() / (called.sum() + truth.sum())

    for c in (0, 1):  # no other threshold does better
        assert max(f1(c, t) for t in np.linspace(0, 1, 101)) <= f1(c, thresholds[c]) + 1e-9
    report = multilabel_report(probs, targets, ["a", "b", "c"], thresholds)
    assert report.f1 == pytest.approx([6 / 7, 1.0, 0.0])
    # micro F1 from the summed counts: tp 5, fp 2 (class 0's 0.4, class 2's 0.7), fn 0
    assert report.f1_micro == pytest.approx(10 / 12) and report.f1_macro == pytest.approx((6 / 7 + 1) / 3)
    # class 0's ranking 0.9, 0.8, 0.4 (neg), 0.35: AP (1 + 1 + 3/4) / 3; class 1: 1; class 2 left out of the mean
    assert report.ap == pytest.approx([(1 + 1 + 0.75) / 3, 1.0, None])
    assert report.map == pytest.approx(((1 + 1 + 0.75) / 3 + 1) / 2)
    assert report.support == [3, 2, 0]


def test_one_tag_is_scored_like_several() -> None:
    probs, targets = np.array([[0.9], [0.4], [0.35], [0.1]]), np.array([[1], [0], [1], [0]])
    report = multilabel_report(probs, targets, ["defect"], tune_thresholds(probs, targets))
    assert report.ap == pytest.approx([(1 + 2 / 3) / 2]) and report.map == pytest.approx((1 + 2 / 3) / 2)


def test_thresholds_are_kept_as_tuned_in_the_model_file() -> None:
    from cnnapps.apps.classify.model import HEAD, Classifier
    from cnnapps.backbones import create_backbone

    tuned = [0.9999998211860657, 0.45]  # rounded to 6 decimals the first became 1.0: the class was never called
    model = Classifier(create_backbone("lenet5", weights=None, in_channels=3), 2, class_names=["a", "b"],
                       multilabel=True, thresholds=tuned)  # fmt: skip
    assert HEAD.describe(model).kwargs["thresholds"] == tuned


# -- training, model files, prediction ----------------------------------------------------------------------------
def test_the_val_loss_reported_is_that_of_the_weights_kept(tagged: Path, tmp_path: Path) -> None:
    """With --ema the saved weights may be the averaged ones: metrics.json's val_loss is theirs (the BCE of the
    model file's probabilities on the validation images), not the raw weights' of the history."""
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.datasets.folders import train_val_split

    config = multilabel_config(tagged, tmp_path / "run", ema=True, ema_decay=0.9, lr=0.05, device="cpu", epochs=1)
    metrics = train_classifier(config)
    assert metrics["ema"]["weights"] == "ema"  # the case: the averaged weights kept (here, on this seed)
    _, val_set = train_val_split(config.data, config.val_split, config.seed, None)
    _, probs, _ = cnnapps.load(tmp_path / "run" / "model.safetensors", engine="eager", device="cpu").predict_proba(
        val_set.paths
    )
    targets = np.zeros_like(probs)
    for row, labels in zip(targets, val_set.labels, strict=True):
        row[list(labels)] = 1
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    bce = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    assert metrics["val_loss"] == pytest.approx(bce, abs=1e-4)


def test_training_writes_thresholds_and_predicts_several_labels(multilabel_run, tagged: Path) -> None:
    from cnnapps.bundle import read_metadata

    model_file, _ = multilabel_run
    head = read_metadata(model_file)["heads"]["classify"]
    assert head["labels"] == ["blue", "green", "red"]
    assert head["kwargs"]["multilabel"] is True and len(head["kwargs"]["thresholds"]) == 3
    assert all(0 <= t <= 1 for t in head["kwargs"]["thresholds"])
    written = json.loads((model_file.parent / "metrics.json").read_text())
    assert written["multilabel"] is True and written["thresholds"] == head["kwargs"]["thresholds"]
    assert {"val_map", "val_f1_micro", "val_f1_macro"} <= set(written) and 0 <= written["val_map"] <= 1
    assert set(written["per_class"]["red"]) == {"ap", "f1", "precision", "recall", "threshold", "support"}
    assert all("val_map" in h and "val_f1_micro" in h for h in written["history"])
    assert len(written["history"]) == 2

    predictor = cnnapps.load(model_file)
    assert predictor.multilabel and predictor.thresholds == pytest.approx(head["kwargs"]["thresholds"])
    pair = tagged / "03.png"  # red and green
    _, probs, _ = predictor.predict_proba([pair])
    (result,) = predictor.predict([pair], top_k=2)
    expected = [n for n, p, t in zip(predictor.class_names, probs[0], predictor.thresholds, strict=True) if p >= t]
    assert sorted(p.label for p in result.labels) == sorted(expected)
    assert not np.isclose(probs[0].sum(), 1.0)  # a sigmoid per class, not a softmax
    (everything,) = predictor.predict([pair], threshold=0.0)  # one threshold for all classes
    assert [p.label for p in everything.labels] == [p.label for p in everything.predictions]
    assert len(everything.labels) == 3 and everything.headline().count(", ") == 2
    scores = [p.score for p in everything.labels]
    assert scores == sorted(scores, reverse=True)
    picture = everything.draw(np.zeros((40, 40, 3), np.uint8), width=120)
    assert picture.shape[1] == 120 and picture.shape[0] > 120


def test_the_model_learns_which_colours_an_image_has(multilabel_run, tagged: Path) -> None:
    predictor = cnnapps.load(multilabel_run[0])
    results = predictor.predict([tagged / f"{i:02d}.png" for i in range(6)])
    several = [r for r in results if len(r.labels) >= 2]
    assert several, [r.to_dict() for r in results]
    right = sum(sorted(p.label for p in r.labels) == sorted(LABEL_SETS[i]) for i, r in enumerate(results))
    assert right >= 4, [r.to_dict() for r in results]


def test_single_label_files_load_and_predict_as_before(trained, colour_set: Path) -> None:
    from cnnapps.bundle import read_metadata

    out, _ = trained
    assert "multilabel" not in read_metadata(out / "model.safetensors")["heads"]["classify"]["kwargs"]
    predictor = cnnapps.load(out / "model.safetensors")
    assert not predictor.multilabel and predictor.thresholds is None
    (result,) = predictor.predict([sorted((colour_set / "red").glob("*.png"))[0]], top_k=3)
    assert result.labels is None and result.headline() == result.top1.label == "red"
    assert list(result.to_dict()) == ["path", "predictions"]
    assert sum(p.score for p in result.predictions) == pytest.approx(1.0, abs=1e-4)  # softmax
    with pytest.raises(CnnappsError, match="threshold: the model is single-label"):
        predictor.predict([colour_set / "red" / "00.png"], threshold=0.3)


def test_a_bad_thresholds_entry_is_a_one_line_error(multilabel_run, tmp_path: Path) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import read_model_file, write_model_file
    from cnnapps.bundle import BundleError

    model_file = read_model_file(multilabel_run[0])
    info = model_file.heads["classify"]
    info.kwargs = {**info.kwargs, "thresholds": [0.5, 2.0]}
    bad = tmp_path / "bad.safetensors"
    write_model_file(bad, model_file.trunk, model_file.trunk_tensors(), {"classify": (info, model_file.head_tensors(
        "classify"))}, model_file.preprocess)  # fmt: skip
    with pytest.raises(BundleError, match=r"heads\.classify\.kwargs: thresholds: expected 3 numbers between 0 and 1"):
        load_classifier(bad)
    info.kwargs = {**info.kwargs, "thresholds": [0.5, 0.5, 0.5], "multilabel": "yes"}  # was read as single-label
    bad.unlink()
    write_model_file(bad, model_file.trunk, model_file.trunk_tensors(), {"classify": (info, model_file.head_tensors(
        "classify"))}, model_file.preprocess)  # fmt: skip
    with pytest.raises(BundleError, match=r"heads\.classify\.kwargs\.multilabel: expected true or false, found 'yes'"):
        load_classifier(bad)


def test_cli_json_threshold_and_eval(multilabel_run, tagged: Path, trained, run_cli) -> None:
    model_file, _ = multilabel_run
    code, out, _ = run_cli("classify", tagged / "03.png", tagged / "04.png", "--model", model_file, "--json",
                           "--top-k", "2")  # fmt: skip
    assert code == 0
    answers = json.loads(out)
    assert [list(a) for a in answers] == [["path", "labels", "predictions", "engine"]] * 2
    assert all(set(x) == {"label", "score"} for a in answers for x in a["labels"])
    assert [len(a["predictions"]) for a in answers] == [2, 2]
    assert set(answers[0]["predictions"][0]) == {"label", "index", "score"}
    code, out, _ = run_cli("classify", tagged / "03.png", "--model", model_file, "--json", "--threshold", "0")
    assert code == 0 and len(json.loads(out)[0]["labels"]) == 3
    code, out, _ = run_cli("classify", tagged / "03.png", "--model", model_file)
    assert code == 0 and "labels" in out
    code, _, err = run_cli("classify", tagged / "03.png", "--model", trained[0] / "model.safetensors",
                           "--threshold", "0.5")  # fmt: skip
    assert code == 2 and "single-label" in err
    code, out, _ = run_cli("eval", "classify", "--model", model_file, "--data", tagged / "labels.csv", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["multilabel"] is True and report["n"] == 36
    assert {"map", "f1_micro", "f1_macro", "thresholds", "per_class"} <= set(report) and 0 <= report["map"] <= 1
    code, out, _ = run_cli("eval", "classify", "--model", model_file, "--data", tagged)
    assert code == 0 and "mAP" in out and "F1 micro" in out


def test_a_shared_trunk_pass_gives_the_labels_too(multilabel_run, tagged: Path) -> None:
    """What the HTTP service runs: the model file's heads on one trunk pass (the route answers ``to_dict()``)."""
    from cnnapps.api import load_heads

    predictor = cnnapps.load(multilabel_run[0])
    (alone,) = predictor.predict([tagged / "04.png"], top_k=3)
    (shared,) = load_heads(multilabel_run[0]).predict([tagged / "04.png"], top_k=3)
    answer = shared.results["classify"].to_dict()
    assert [x["label"] for x in answer["labels"]] == [p.label for p in alone.labels]
    assert answer["predictions"][0]["score"] == pytest.approx(alone.predictions[0].score, abs=1e-4)


# -- options with no multi-label form ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "message"),
    [({"mix": "mixup"}, "mix: "), ({"sampler": "balanced"}, "sampler: "), ({"logit_adjust": 1.0}, "logit_adjust: ")],
)
def test_options_without_a_multilabel_form_are_refused(option: dict, message: str, tagged: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    from cnnapps.apps.classify.train import train_classifier

    with pytest.raises(ConfigError, match=message):
        multilabel_config(tagged, tmp_path / "a", multilabel=True, **option).validate()
    with pytest.raises(ConfigError, match=f"^{message}.*has images with several labels") as caught:
        train_classifier(multilabel_config(tagged, tmp_path / "b", **option))  # found in the data
    assert "\n" not in str(caught.value)


def test_auto_class_weights_weigh_each_class_positives() -> None:
    from cnnapps.apps.classify.balance import positive_weights

    weights = positive_weights("auto", [(0,), (0, 1), (0,), ()], ["a", "b", "c"])
    assert weights.tolist() == [1 / 3, 3.0, 4.0]  # negatives / positives; no positive counts one
    # a class on every image has no negative to weigh it against: 1 (its weight of 0 stopped it from training)
    assert positive_weights("auto", [(0, 1), (0,), (0, 1)], ["a", "b"]).tolist() == [1.0, 0.5]


def test_ema_of_multilabel_weights_is_validated_and_the_better_kept(tagged: Path, tmp_path: Path) -> None:
    """--ema on multi-label data: the averaged weights' mAP is validated beside the raw weights' each epoch, the
    best checkpoint is chosen by the better of the two, and the model file holds that one's weights."""
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.classify.train import train_classifier

    out = tmp_path / "ema"
    # one epoch at a high lr: the raw weights still swing, their average is the better (mAP 0.66 against 0.58)
    metrics = train_classifier(multilabel_config(tagged, out, epochs=1, lr=0.3, ema=True, ema_decay=0.9, device="cpu"))
    written = json.loads((out / "metrics.json").read_text())
    ema = written["ema"]
    assert ema["weights"] == "ema" and ema["ema_val_map"] > ema["raw_val_map"] + 0.02
    assert all({"val_map", "val_ema_map", "val_select_map"} <= set(h) for h in written["history"])
    best = max(written["history"], key=lambda h: h["val_select_map"])
    assert (ema["raw_val_map"], ema["ema_val_map"]) == (best["val_map"], best["val_ema_map"])
    assert ema["weights"] == ("ema" if best["val_ema_map"] > best["val_map"] else "raw")
    # the thresholds were tuned on the kept weights' probabilities: the final mAP is the better of the two
    assert metrics["val_map"] == pytest.approx(best["val_select_map"], abs=1e-6)
    state = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    raw, averaged = state["model.fc.weight"], state["ema.module.fc.weight"]
    assert not torch.equal(raw, averaged)
    saved = load_classifier(out / "model.safetensors").model.fc.weight
    assert torch.equal(saved, averaged if ema["weights"] == "ema" else raw)
