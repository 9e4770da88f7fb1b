"""`cnnapps train|eval detect/segment/pose` and the predict verbs, end to end on tiny synthetic sets."""

from __future__ import annotations

import json

import pytest

from cnnapps.datasets.synthetic import write_coco

TINY = ("--backbone", "resnet18", "--weights", "none", "--fpn-channels", "16", "--min-size", "96", "--max-size", "96",
        "--epochs", "1", "--batch-size", "4", "--workers", "0")  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_coco("shapes", root, "train", 12, seed=0, size=96)
    write_coco("shapes", root, "val", 4, seed=1, size=96)
    return root


@pytest.fixture(scope="module")
def segmenter(shapes, tmp_path_factory):
    from cnnapps.cli import main

    out = tmp_path_factory.mktemp("runs") / "seg"
    args = ["train", "segment", "--data", shapes / "train.json", "--images", shapes / "train", "--val-data",
            shapes / "val.json", "--val-images", shapes / "val", "--out", out, *TINY]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert not done.value.code
    return out


def test_train_writes_the_run_folder(segmenter):
    for name in ("model.safetensors", "metrics.json", "curves.png", "config.yaml", "checkpoints/last.ckpt"):
        assert (segmenter / name).is_file(), name
    (logs,) = (segmenter / "logs").iterdir()  # CSV and TensorBoard logs side by side in one version folder
    assert logs.name == "version_0" and (logs / "metrics.csv").is_file() and list(logs.glob("events.out.*"))
    metrics = json.loads((segmenter / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val_segm_ap50"] <= 1.0
    assert metrics["class_names"] == ["__background__", "circle", "square", "triangle"]


def test_train_refuses_an_existing_run(run_cli, shapes, segmenter):
    code, _, err = run_cli("train", "segment", "--data", shapes / "train.json", "--images", shapes / "train",
                           "--out", segmenter, *TINY)  # fmt: skip
    assert code == 2 and "already holds a training run" in err


def test_segment_json_and_overlays(run_cli, shapes, segmenter, tmp_path):
    model = segmenter / "model.safetensors"
    images = [shapes / "val" / "shapes_00000.png", shapes / "val" / "shapes_00001.png"]
    code, out, _ = run_cli("segment", *images, "--model", model, "--score-threshold", "0", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(p) for p in images]
    inst = results[0]["instances"][0]
    assert set(inst) == {"label", "score", "box", "mask"} and inst["mask"]["size"] == [96, 96]
    assert inst["label"] in ("circle", "square", "triangle")
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "shapes_00000.png").write_bytes(b"mine")
    code, _, _ = run_cli("segment", images[0], "--model", model, "--save-dir", tmp_path / "overlays")
    assert code == 0 and (tmp_path / "overlays" / "shapes_00000.png").read_bytes() == b"mine"
    assert (tmp_path / "overlays" / "shapes_00000-1.png").stat().st_size > 1000


def test_bad_inputs_are_reported_and_skipped(run_cli, shapes, segmenter, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = run_cli("segment", shapes / "val" / "shapes_00000.png", tmp_path / "broken.png",
                             "--model", segmenter / "model.safetensors", "--json")  # fmt: skip
    assert code == 1
    assert "broken.png" in err and "error" in json.loads(out)[1]


def test_wrong_task_is_a_clear_error(run_cli, shapes, segmenter):
    code, _, err = run_cli("pose", shapes / "val" / "shapes_00000.png", "--model", segmenter / "model.safetensors")
    assert code == 2 and "a segment model, not a pose model" in err


def test_eval_json_and_results_file(run_cli, shapes, segmenter, tmp_path):
    code, out, _ = run_cli("eval", "segment", "--model", segmenter / "model.safetensors", "--data",
                           shapes / "val.json", "--images", shapes / "val", "--json",
                           "--save-results", tmp_path / "results.json")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 4 and {"bbox_ap", "segm_ap50", "segm_ap_small"} <= set(report["metrics"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == report["detections"] and {"segmentation", "bbox", "score"} <= set(results[0])
    again = ("eval", "segment", "--model", segmenter / "model.safetensors", "--data", shapes / "val.json",
             "--images", shapes / "val", "--save-results", tmp_path / "results.json")  # fmt: skip
    code, _, err = run_cli(*again)
    assert code == 2 and "already exists" in err
    wrong = ("eval", "segment", "--model", segmenter / "model.safetensors", "--data", shapes / "val.json")
    code, out, err = run_cli(*wrong, "--images", tmp_path / "nowhere")
    assert code == 2 and "no such image folder" in err and out == ""
    code, out, err = run_cli(*wrong, "--images", tmp_path)  # a folder without the set's images
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path}: none of the 4 images of ") and "(no shapes_00000.png)" in err
    code, out, err = run_cli("eval", "segment", "--model", "nope", "--data", shapes / "val.json",
                             "--images", tmp_path)  # fmt: skip
    assert code == 2 and "none of the 4 images" in err  # the folder is checked before the model loads
    for name in ("shapes_00000.png", "shapes_00001.png", "shapes_00002.png", "shapes_00003.png"):
        (tmp_path / name).write_bytes(b"not a png")
    code, out, err = run_cli(*wrong, "--images", tmp_path)  # the images are there, none can be read
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "none of its 4 images could be read" in err and "shapes_00000.png: not an image" in err
    code, out, err = run_cli("eval", "segment", "--model", "nope", "--data", tmp_path / "missing.json",
                             "--images", shapes / "val")  # fmt: skip
    assert code == 2 and "missing.json" in err  # the data is read first: no model was loaded to say so


def test_validation_keypoints_listed_otherwise_are_refused(run_cli, tmp_path):
    """Validation scores keypoints in the model's (the training file's) order: a --val-data listing them
    otherwise is refused in one line before training."""
    write_coco("people", tmp_path, "train", 2, seed=0, size=96)
    val = write_coco("people", tmp_path, "val", 2, seed=1, size=96)
    data = json.loads(val.read_text())
    data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][::-1]
    val.write_text(json.dumps(data))
    args = ("--data", tmp_path / "train.json", "--images", tmp_path / "train", "--val-data", val, "--val-images",
            tmp_path / "val", "--out", tmp_path / "run", *TINY)  # fmt: skip
    code, _, err = run_cli("train", "pose", *args)
    assert code == 2 and "val.json: its keypoints (right_ankle, left_ankle" in err and "another order" in err, err
    assert not (tmp_path / "run").exists()


def test_train_and_run_pose(run_cli, tmp_path):
    write_coco("people", tmp_path, "train", 8, seed=0, size=96)
    code, out, err = run_cli("train", "pose", "--data", tmp_path / "train.json", "--images", tmp_path / "train",
                             "--val-split", "0.25", "--out", tmp_path / "run", "--json", *TINY)  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)
    assert "val_keypoints_ap50" in metrics and "val_bbox_ap" in metrics
    model = tmp_path / "run" / "model.safetensors"
    code, out, _ = run_cli("pose", tmp_path / "train" / "people_00000.png", "--model", model, "--score-threshold", "0",
                           "--json")  # fmt: skip
    (result,) = json.loads(out)
    assert result["instances"] and len(result["instances"][0]["keypoints"]) == 17


def test_resume_continues_the_history(run_cli, shapes, tmp_path):
    args = ("--data", shapes / "train.json", "--images", shapes / "train", "--out", tmp_path / "run", "--json")
    code, _, err = run_cli("train", "detect", *args, *TINY)
    assert code == 0, err
    more = [a if a != "1" else "2" for a in TINY]  # --epochs 2
    code, out, err = run_cli("train", "detect", *args, *more, "--resume")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and "val_bbox_ap" in json.loads(out)
    assert sorted(p.name for p in (tmp_path / "run" / "logs").iterdir()) == ["version_0", "version_1"]


@pytest.mark.parametrize(("task", "promised", "not_promised"),
                         [("detect", "box", ("mask", "RLE", "keypoints")), ("segment", "RLE", ("keypoints",)),
                          ("pose", "keypoints", ("RLE",))])  # fmt: skip
def test_json_help_promises_what_each_task_returns(run_cli, task, promised, not_promised):
    code, out, _ = run_cli(task, "--help")
    text = " ".join(out.split())  # the help's lines joined as one text
    json_help = text[text.index("--json") : text.index("--json") + 160]
    assert code == 0 and promised in json_help
    assert not any(word in json_help for word in not_promised)
