"""A k-fold run folder with any trace of an earlier run is refused without --resume, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.apps.common.kfold import PLAN, cross_validate
from cnnapps.errors import CnnappsError


def _started_run(out: Path) -> dict[Path, bytes]:
    """A k-fold run stopped in its third fold: its settings, its plan and two finished folds (every file's bytes)."""
    files = {
        out / "config.yaml": b"task: classify\nlr: null\n",
        out / PLAN: b"{}\n",
        out / "fold-1" / "config.yaml": b"task: classify\nlr: null\n",
        out / "fold-1" / "model.safetensors": b"model",
        out / "fold-2" / "config.yaml": b"task: classify\nlr: null\n",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("left", ["everything", "config.yaml", PLAN, "fold-2"])
def test_an_interrupted_kfold_run_is_refused_without_resume(colour_set: Path, tmp_path: Path, tiny_config,
                                                            left: str) -> None:  # fmt: skip
    """A second run into the folder (another lr) is refused in one line, and the run's settings are kept."""
    out = tmp_path / "cv"
    files = _started_run(out)
    if left != "everything":  # only one trace of the earlier run is left
        for path in files:
            if out / left not in (path, *path.parents):
                path.unlink()
        files = {path: data for path, data in files.items() if path.exists()}
    with pytest.raises(CnnappsError) as caught:
        cross_validate("classify", tiny_config(colour_set, out, lr=0.05), 3)
    assert str(caught.value) == f"{out}: already holds a training run; pass another --out, or --resume to continue it"
    assert {path: path.read_bytes() for path in files} == files
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(files)


def test_the_kfold_pool_takes_train_and_valid_folders_as_splits(tmp_path: Path) -> None:
    from cnnapps.apps.common.kfold import pooled_images
    from tests.conftest import write_colour_set

    write_colour_set(tmp_path / "data" / "train", per_class=3)
    write_colour_set(tmp_path / "data" / "valid", per_class=2, seed=1)  # Roboflow's name for the validation split
    pool = pooled_images(tmp_path / "data")
    assert "valid" not in pool.class_names and "train" not in pool.class_names  # it was refused: "are splits"
    assert len(pool.paths) == len(pool.class_names) * 5


@pytest.mark.parametrize("left", ["everything", PLAN, "fold-2"])
def test_a_run_of_one_model_is_not_written_into_a_kfold_run(colour_set: Path, tmp_path: Path, tiny_config,
                                                            left: str) -> None:  # fmt: skip
    """A plain `train` into a stopped k-fold run's folder wrote its model, metrics and config.yaml beside the folds,
    and the k-fold run could never be resumed: refused, every file kept; with --resume it says how to resume."""
    from cnnapps.apps.classify.train import train_classifier as train

    out = tmp_path / "cv"
    files = _started_run(out)
    if left != "everything":
        for path in files:
            if out / left not in (path, *path.parents):
                path.unlink()
        files = {path: data for path, data in files.items() if path.exists()}
    with pytest.raises(CnnappsError) as caught:
        train(tiny_config(colour_set, out, lr=0.01))
    assert str(caught.value) == f"{out}: already holds a training run; pass another --out, or --resume to continue it"
    if left != "everything":  # with the run's config.yaml, its settings are checked first
        with pytest.raises(CnnappsError, match=r"nothing to resume \(no checkpoints/last.ckpt\); a k-fold run resum"):
            train(tiny_config(colour_set, out, resume=True))
    assert {path: path.read_bytes() for path in files} == files
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(files)


def test_a_kfold_resume_trains_its_next_folds_as_its_first(colour_set: Path, tmp_path: Path, run_cli) -> None:
    """A --resume given other epochs or class weights trained the next folds with them and averaged them with the
    finished folds (and wrote them into the run's config.yaml): refused naming both; the run resumes as it was."""
    import yaml

    out = tmp_path / "cv"
    tiny = ("--data", colour_set, "--backbone", "lenet5", "--weights", "none", "--batch-size", 8, "--workers", 0,
            "--augment", "none", "--kfold", 2, "--out", out)  # fmt: skip
    code, _, stderr = run_cli("train", "classify", *tiny, "--epochs", 1)
    assert code == 0, stderr
    (out / "fold-2" / "metrics.json").unlink()  # as if stopped in the second fold
    settings = (out / "config.yaml").read_bytes()
    for given, said in ((("--epochs", 2), "epochs: the k-fold run in"), (("--class-weights", "auto"), "class_weights")):
        code, _, stderr = run_cli("train", "classify", *tiny, "--resume", *given)
        assert code == 2 and stderr.startswith(f"error: {said}") and "averaged as one recipe" in stderr, stderr
        assert (out / "config.yaml").read_bytes() == settings and not (out / "fold-2" / "metrics.json").exists()
    code, _, stderr = run_cli("train", "classify", *tiny, "--resume")
    assert code == 0, stderr
    assert yaml.safe_load((out / "fold-2" / "config.yaml").read_text())["epochs"] == 1
    code, _, stderr = run_cli("train", "classify", *tiny[:-1], tmp_path / "none", "--resume")
    assert code == 2 and f"{tmp_path / 'none'}: nothing to resume (no {PLAN})" in stderr
