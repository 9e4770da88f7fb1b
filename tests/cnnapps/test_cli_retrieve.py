from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("pictures")
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        cv2.imwrite(str(root / f"{name}.jpg"), getattr(data, name)()[:, :, ::-1])
    cv2.imwrite(str(root / "chelsea-copy.png"), cv2.resize(data.chelsea()[:, :, ::-1], (300, 200)))
    return root


def test_index_commands_and_retrieve(run_cli, pictures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    shutil.copytree(pictures, folder)
    index = tmp_path / "idx"
    code, out, _ = run_cli("index", "build", folder, "--index", index, "--json")
    assert code == 0 and json.loads(out)["items"] == 5
    code, _, err = run_cli("index", "build", folder, "--index", index)
    assert code == 2 and "already exists" in err
    before = _files(index)
    empty = tmp_path / "empty"
    empty.mkdir()
    for given, message in [(tmp_path / "nowhere", "no such file or folder"), (empty, "no images found")]:
        code, out, err = run_cli("index", "add", given, "--index", index)  # as dedup: exit 2 before any work
        assert (code, out) == (2, "") and err.strip() == f"error: {given}: {message}"
    assert _files(index) == before

    grid = tmp_path / "grid.png"
    code, out, _ = run_cli(
        "retrieve",
        "--query",
        pictures / "chelsea.jpg",
        "--index",
        index,
        "-k",
        "2",
        "--json",
        "--save-grid",
        grid,
    )
    result = json.loads(out)[0]
    assert code == 0 and result["query"] == str(pictures / "chelsea.jpg")
    assert [Path(r["path"]).name for r in result["results"]] == ["chelsea.jpg", "chelsea-copy.png"]
    assert result["results"][0]["rank"] == 1 and result["results"][0]["score"] > 0.99
    assert result["engine"] == "jit"  # the engine that embedded the query (auto on a CPU)
    assert cv2.imread(str(grid)).shape[1] > 3 * 150

    code, out, _ = run_cli("index", "remove", folder / "rocket.jpg", "--index", index, "--json")
    assert code == 0 and json.loads(out)["items"] == 4
    code, out, err = run_cli("index", "remove", folder / "rocket.jpg", "--index", index, "--json")
    assert code == 1 and json.loads(out)["items"] == 4 and "1 path given not in" in err
    (folder / "coffee.jpg").unlink()
    shutil.copy(pictures / "rocket.jpg", folder / "rocket2.jpg")
    code, out, _ = run_cli("index", "sync", folder, "--index", index, "--json")
    report = json.loads(out)
    assert code == 0 and (report["added"], report["removed"], report["items"]) == (2, 1, 5)  # rocket + rocket2 back
    code, out, _ = run_cli("index", "info", "--index", index)
    assert code == 0 and "efficientnet_lite0" in out and "1280" in out

    code, out, err = run_cli("retrieve", "-q", folder / "missing.jpg", "--index", index, "--json")
    assert code == 1 and json.loads(out)[0]["error"] == "no such file"
    code, _, err = run_cli("index", "info", "--index", tmp_path / "nothing")
    assert code == 2 and "no index here" in err
    for verb in (["index", "info"], ["retrieve", "-q", folder / "rocket2.jpg"]):  # a file is not an index
        code, _, err = run_cli(*verb, "--index", folder / "rocket2.jpg")
        assert code == 2 and f"{folder / 'rocket2.jpg'}: a file, not an index (an index is a folder" in err, err


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and time of change."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dedup(run_cli, pictures: Path) -> None:
    code, out, _ = run_cli("dedup", pictures, "--json")
    groups = json.loads(out)["groups"]
    assert code == 0 and len(groups) == 1
    assert json.loads(out)["engine"] == "jit"  # the engine that embedded the images, as every verb's --json says
    assert sorted(Path(p).name for p in groups[0]["images"]) == ["chelsea-copy.png", "chelsea.jpg"]
    code, out, _ = run_cli("dedup", pictures, "--threshold", "0.999")  # the resized copy's hash still matches
    assert code == 0 and out.startswith("1 group of near-duplicates among 5 images")
    assert "or hashes at most 6 bits apart" in out
    code, out, _ = run_cli("dedup", pictures, "--threshold", "0.999", "--hash-bits", "-1")
    assert code == 0 and out.startswith("0 groups")


def test_train_and_eval_retrieve_commands(run_cli, colour_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "retrieve", "--data", colour_set, "--backbone", "lenet5", "--weights", "none", "--epochs", "2"]
    args += ["--batch-size", "8", "--workers", "0", "--embedding-size", "8", "--out", run, "--json"]
    code, out, _ = run_cli(*args)
    assert code == 0 and set(json.loads(out[out.index("{") :])) >= {"val_recall@1", "val_map@r"}
    code, out, _ = run_cli("eval", "retrieve", "--model", run / "model.safetensors", "--data", colour_set, "--json")
    report = json.loads(out)
    assert code == 0 and report["n"] == 30 and 0 <= report["map@r"] <= 1
    code, out, _ = run_cli(
        "index",
        "build",
        colour_set,
        "--index",
        tmp_path / "idx",
        "--model",
        run / "model.safetensors",
        "--json",
    )
    assert code == 0 and json.loads(out)["dim"] == 8


def test_index_build_skips_bad_files_and_load_embeds(run_cli, pictures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    shutil.copytree(pictures, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run_cli("index", "build", folder, "--index", tmp_path / "idx", "--json")
    assert code == 1 and json.loads(out)["items"] == 5
    assert "broken.jpg" in err and "1 image could not be read" in err

    import cnnapps

    embedder = cnnapps.load("efficientnet_lite0", task="retrieve")
    names, vectors, errors = embedder.embed([str(pictures / "chelsea.jpg"), b"junk"])
    assert names == [str(pictures / "chelsea.jpg"), "<bytes>"]
    assert vectors.shape == (2, 1280) and errors[0] is None and "not an image" in errors[1]
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-5


def test_dedup_with_no_images_is_a_one_line_error(run_cli, tmp_path: Path) -> None:
    """Like ``embed``: nothing to look at is an error (exit 2), not a failed file (exit 1) nor empty groups."""
    code, out, err = run_cli("dedup", tmp_path / "nowhere")
    assert (code, out) == (2, "") and err.strip() == f"error: {tmp_path / 'nowhere'}: no such file or folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli("dedup", empty, "--json")
    assert (code, out) == (2, "") and err.strip() == f"error: {empty}: no images found"


def test_index_build_reports_a_missing_input_as_index_add_does(run_cli, tmp_path: Path) -> None:
    from tests.apps.retrieve.conftest import TINY_MODEL

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), (np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3))
    missing = tmp_path / "missing.png"
    for command in (["build", "--model", TINY_MODEL, "--device", "cpu"], ["add"]):
        code, out, err = run_cli("index", *command, image, missing, "--index", tmp_path / "idx", "--json")
        assert code == 1 and json.loads(out)["items"] == 1  # build was: exit 0, the missing file not mentioned
        assert f"{missing}: no such file" in err
