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
