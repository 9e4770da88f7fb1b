"""Output folders named by the commands: a file of that name is refused in one line before any model loads, and
kept as it was."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["segment"], "--save-dir"),
        (["pose"], "--save-dir"),
        (["caption"], "--save-attention"),
        (["semantic"], "--save-dir"),
        (["semantic"], "--save-masks"),
        (["predict"], "--save-dir"),
    ],
)
def test_an_output_folder_that_is_a_file_is_refused_before_the_model_loads(command, option, run_cli, tmp_path) -> None:
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    missing_model = tmp_path / "no-such-model.safetensors"  # the folder is checked first: no model is loaded
    model = [missing_model] if command == ["predict"] else ["--model", missing_model]  # predict MODEL IMAGES
    code, out, err = run_cli(*command, *model, image, option, taken)
    assert code == 2 and err.strip() == f"error: {taken}: a file, not a folder; choose another {option}", err
    assert taken.read_text() == "mine" and out == ""
    code, _, err = run_cli(*command, *model, image, option, taken / "inside")  # under a file
    assert (
        code == 2
        and err.strip() == f"error: {taken / 'inside'}: {taken} is a file, not a folder; choose another {option}"
    )


@pytest.mark.parametrize(
    "command",
    [["visualize", "filters"], ["visualize", "gradcam", "IMAGE"], ["data", "show", "IMAGE"]],
)
def test_a_picture_name_no_format_writes_is_refused_before_the_work(command, run_cli, tmp_path) -> None:
    """Grad-CAM ran whole, printed its line, then failed to write notes.txt (exit 2 after the work)."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "notes.txt"
    args = [str(image) if a == "IMAGE" else a for a in command]
    code, stdout, err = run_cli(
        *args, "--out", out, *(["--model", tmp_path / "none.safetensors"] * (command[0] != "data"))
    )
    assert code == 2 and err.strip() == f"error: --out {out}: no picture format is written as .txt; use .png or .jpg"
    assert stdout == "" and not out.exists()


@pytest.fixture
def fake_semantic_eval(monkeypatch):
    """``eval semantic`` with the data, model and evaluation stubbed out: a fixed 2-class report; ``calls`` counts
    the evaluations run (0 when the command refused its input first)."""
    import cnnapps.api
    import cnnapps.apps.semantic.evaluate
    import cnnapps.datasets.semantic
    from cnnapps.apps.semantic.evaluate import SemanticReport

    calls = []
    monkeypatch.setattr(cnnapps.datasets.semantic, "read_semantic_data", lambda *a, **k: [1, 2, 3])
    monkeypatch.setattr(cnnapps.api, "load", lambda *a, **k: object())

    def evaluate(predictor, dataset, progress=None):
        calls.append(dataset)
        return SemanticReport(images=3, class_names=["sky", "water"], confusion=[[50, 5], [10, 35]])

    monkeypatch.setattr(cnnapps.apps.semantic.evaluate, "evaluate_semantic", evaluate)
    return calls


def test_save_confusion_without_a_suffix_writes_that_name_and_keeps_name_png(fake_semantic_eval, run_cli, tmp_path):
    """matplotlib wrote NAME.png over the user's file while the command said it wrote NAME."""
    theirs = tmp_path / "confusion.png"
    theirs.write_bytes(b"mine")
    target = tmp_path / "confusion"
    code, _, err = run_cli("eval", "semantic", "--model", "m", "--data", "d", "--json", "--save-confusion", target)
    assert code == 0, err
    assert theirs.read_bytes() == b"mine" and f"wrote {target}\n" in err
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion", "confusion.png"]


@pytest.mark.parametrize(("suffix", "magic"), [(".bmp", b"BM"), (".ppm", b"P6"), (".jp2", b"\x00\x00\x00\x0cjP")])
def test_save_confusion_in_a_format_opencv_writes(fake_semantic_eval, run_cli, tmp_path, suffix, magic) -> None:
    """The suffixes --save-confusion accepts are written, not a ValueError from matplotlib after the evaluation."""
    target = tmp_path / f"confusion{suffix}"
    code, _, err = run_cli("eval", "semantic", "--model", "m", "--data", "d", "--json", "--save-confusion", target)
    assert code == 0, err
    assert target.read_bytes().startswith(magic) and f"wrote {target}" in err


@pytest.mark.parametrize("suffix", [".pgm", ".pbm"])
def test_save_confusion_in_a_grey_only_format_is_refused_before_the_work(fake_semantic_eval, run_cli, tmp_path, suffix):
    """OpenCV has a writer for .pgm and .pbm, but only of grey pictures: a colour one failed after the evaluation."""
    target = tmp_path / f"confusion{suffix}"
    code, out, err = run_cli("eval", "semantic", "--model", "m", "--data", "d", "--save-confusion", target)
    assert code == 2 and fake_semantic_eval == [] and not target.exists() and out == ""
    assert err.strip() == (
        f"error: --save-confusion {target}: a colour picture cannot be written as {suffix}; use .png or .jpg"
    )


@pytest.fixture
def read_only(monkeypatch):
    """Folders made read-only for this process whoever runs the tests (root writes anywhere): add to the list."""
    import os

    folders: list = []
    access = os.access

    def denied(path, mode, *args, **kwargs):
        if mode & os.W_OK and any(os.path.samefile(path, f) for f in folders if os.path.exists(path)):
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    return folders


@pytest.mark.parametrize(
    ("command", "option", "output"),
    [
        (["visualize", "gradcam", "IMAGE", "--model", "MODEL"], "--out", "x.png"),
        (["visualize", "filters", "--model", "MODEL"], "--out", "x.png"),
        (["predict", "MODEL", "IMAGE"], "--save-dir", "drawn"),
        (["detect", "IMAGE", "--model", "MODEL"], "--save-dir", "drawn"),
        (["export", "MODEL"], "--out", "x.onnx"),
        (["compose", "MODEL", "MODEL"], "--out", "x.safetensors"),
        (["index", "build", "IMAGE", "--model", "MODEL"], "--index", "idx"),
        (["classify", "VIDEO", "--model", "MODEL"], "--save-video", "x.mp4"),
        (["classify", "VIDEO", "--model", "MODEL"], "--save-frames", "frames"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(command, option, output, run_cli, tmp_path,
                                                                     read_only) -> None:  # fmt: skip
    """A file in the way of the output's folder, or a folder this process may not write in, was found when the
    output was written, after all the work: a traceback's one line and exit 3 ("unexpected failure")."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # never opened: the output is refused first
    missing_model = tmp_path / "no-such-model.safetensors"  # and no model is loaded
    args = [{"IMAGE": image, "MODEL": missing_model, "VIDEO": video}.get(a, a) for a in command]
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    target = taken / "sub" / output
    code, out, err = run_cli(*args, option, target)
    assert code == 2 and out == "", err
    assert err == f"error: {target}: {taken} is a file, not a folder; choose another {option}\n"
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only.append(locked)
    target = locked / "new" / output
    code, out, err = run_cli(*args, option, target)
    assert code == 2 and out == "", err
    assert err == f"error: {target}: {locked} is not writable; choose another {option}\n"
    assert taken.read_text() == "mine" and list(locked.iterdir()) == []


def test_export_makes_a_missing_folder_as_the_other_verbs_do(run_cli, tmp_path) -> None:
    """export said "its folder ... does not exist" (of a file too), where visualize --out nodir/sub/x.png makes it."""
    lenet = Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "classify.safetensors"
    target = tmp_path / "new" / "sub" / "lenet.onnx"
    code, out, err = run_cli("export", lenet, "--format", "onnx", "--out", target, "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == str(target) and target.stat().st_size > 0
