"""Output folders named by the commands: a file of that name is refused in one line before any model loads, and
kept as it was."""

from __future__ import annotations

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
