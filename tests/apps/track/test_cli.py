"""``eval track --model`` on a multi-head file: it tracks with the file's one detector head (or ``--head NAME``),
and a file with none or several says so in one line listing the heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.modelfile import compose


@pytest.fixture(scope="module")
def files(tmp_path_factory, chelsea) -> dict[str, Path]:
    """A detector and a semantic head on one frozen ``timm:test_resnet`` trunk, alone and joined; a clip panning
    over the cat photo; ground truth of one box (the plumbing is under test, not the detector)."""
    import torch

    from cnnapps.apps.detect.model import create_shared_detector, save_detector
    from cnnapps.apps.semantic.model import create_shared_semantic, save_semantic
    from cnnapps.backbones import create_backbone
    from cnnapps.datasets.video import VideoWriter

    root = tmp_path_factory.mktemp("track-heads")
    torch.manual_seed(0)
    trunk = create_backbone("timm:test_resnet", weights=None)
    detector = create_shared_detector("detect", trunk, "timm:test_resnet", trunk.preprocess,
                                      class_names=["__background__", "a"], fpn_channels=16)  # fmt: skip
    with torch.no_grad():  # sure of itself: boxes confident enough to start tracks
        detector.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    save_detector(root / "det.safetensors", detector, trunk_kwargs={})
    stuff = create_shared_semantic(trunk, "timm:test_resnet", "fpn", ["x", "y"], head_channels=8)
    save_semantic(root / "sem.safetensors", stuff, trunk.preprocess, trunk_kwargs={})
    compose([root / "det.safetensors", root / "sem.safetensors"], root / "both.safetensors")
    compose([root / "det.safetensors"] * 2, root / "two.safetensors", names=["near", "far"])
    with VideoWriter(root / "clip.mp4", 10.0) as writer:
        for i in range(4):
            writer.write(np.ascontiguousarray(chelsea[:96, 7 * i : 7 * i + 128]))
    (root / "gt.txt").write_text("".join(f"{f},1,10,10,40,40,1,1,1\n" for f in range(1, 5)))
    return {"root": root, "gt": root / "gt.txt", "clip": root / "clip.mp4"}


def _eval(run_cli, files, model: str, *more: str) -> tuple[int, str, str]:
    return run_cli("eval", "track", "--gt", str(files["gt"]), "--model", str(files["root"] / model), "--video",
                   str(files["clip"]), "--device", "cpu", "--json", *more)  # fmt: skip


def test_a_multi_head_file_tracks_with_its_detector_head(run_cli, files):
    code, alone, err = _eval(run_cli, files, "det.safetensors")
    assert code == 0, err
    code, joined, err = _eval(run_cli, files, "both.safetensors")  # before: "a multi-head model; tracking needs..."
    assert code == 0, err
    code, named, err = _eval(run_cli, files, "both.safetensors", "--head", "detect")
    assert code == 0, err
    assert json.loads(joined) == json.loads(named) == json.loads(alone)
    code, _, err = _eval(run_cli, files, "two.safetensors", "--head", "far")
    assert code == 0, err


def test_a_file_whose_heads_cannot_say_which_tracks_is_one_line_naming_them(run_cli, files):
    code, _, err = _eval(run_cli, files, "two.safetensors")
    assert code == 2 and "several heads track; name one with --head NAME (heads: near (detect), far (detect))" in err
    code, _, err = _eval(run_cli, files, "both.safetensors", "--head", "semantic")
    assert code == 2 and "--head semantic: a semantic head; tracking needs a detector (" in err
    code, _, err = _eval(run_cli, files, "sem.safetensors")
    assert code == 2 and "tracking needs a detector" in err and "(heads: semantic (semantic))" in err
    code, _, err = _eval(run_cli, files, "both.safetensors", "--head", "nope")
    assert code == 2 and "no head named 'nope' (heads: detect, semantic)" in err
