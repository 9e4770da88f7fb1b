"""A rerun of `cnnapps batch` never mixes two models' answers, reports the failures of every part (also those an
earlier run finished), counts one file named several ways once, and GPUs the cluster lacks are refused before
anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from cnnapps.batch import read_rows
from cnnapps.parts import ray_session

EMBEDDER = Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "retrieve.safetensors"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (2 CPUs, no GPU), shared by the commands run in-process."""
    with ray_session(num_cpus=2, num_gpus=0, object_store_memory=80 * 1024 * 1024):
        yield


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    root = tmp_path_factory.mktemp("gallery")
    for i in range(5):
        image = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"img{i}.png"), image)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _other_weights(source: Path, dest: Path) -> None:
    """The same model file with other weights (one tensor changed), its metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as fh:
        metadata = fh.metadata()
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(dest), metadata=metadata)


def test_a_rerun_with_other_weights_in_the_model_file_is_refused(cluster, run_cli, gallery, tmp_path) -> None:
    model, out = tmp_path / "m.safetensors", tmp_path / "out"
    shutil.copy(EMBEDDER, model)
    args = ("batch", "retrieve", gallery, "--out", out, "--model", model, "--part-size", "2")
    code, _, err = run_cli(*args)
    assert code == 1, err  # broken.jpg
    (out / "part-00001.parquet").unlink()
    _other_weights(EMBEDDER, model)
    code, _, err = run_cli(*args)
    assert code == 2 and "started with another model_sha256 (model_sha256 " in err and " then, " in err, err
    assert len(err.strip().splitlines()) == 1 and not (out / "part-00001.parquet").exists()


def test_a_rerun_reports_the_failures_of_parts_an_earlier_run_finished(cluster, run_cli, gallery, tmp_path) -> None:
    out = tmp_path / "out"
    args = ("batch", "retrieve", gallery, "--out", out, "--model", EMBEDDER, "--part-size", "4", "--json")
    code, stdout, err = run_cli(*args)
    first = json.loads(stdout)
    assert code == 1 and [f["path"] for f in first["failed"]] == [str(gallery / "broken.jpg")]
    assert first["predicted"] == first["predicted_now"] == 5
    code, stdout, err = run_cli(*args)  # every part finished: nothing predicted now, the parts' counts reported
    report = json.loads(stdout)
    assert code == 1 and (report["skipped"], report["predicted"], report["predicted_now"]) == (2, 5, 0)
    assert [f["path"] for f in report["failed"]] == [str(gallery / "broken.jpg")]
    code, said, err = run_cli(*args[:-1])
    assert code == 1 and "broken.jpg" in err
    assert said.strip() == f"{out}: 2 parts (2 already finished), 5 inputs predicted (0 by this run)"


def test_one_file_named_several_ways_is_one_input(cluster, run_cli, gallery, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(gallery.parent)
    names = [f"{gallery.name}/img0.png", f"./{gallery.name}/img0.png", str(gallery / "img0.png"),
             f"{gallery.name}/../{gallery.name}/img0.png"]  # fmt: skip
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names) + "\n")
    code, _, err = run_cli("batch", "retrieve", "--files-from", listing, "--out", tmp_path / "out", "--model", EMBEDDER)
    assert code == 0, err
    assert [r["source"] for r in read_rows(tmp_path / "out")] == [str(gallery / "img0.png")]


def test_gpus_the_cluster_lacks_are_refused_before_anything_is_written(cluster, run_cli, gallery, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli("batch", "retrieve", gallery, "--out", out, "--model", EMBEDDER, "--device", "cuda")
    assert code == 2 and "1 worker x 1 GPU asked for, the Ray cluster has 0 GPUs" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = run_cli("batch", "retrieve", gallery, "--out", out, "--model", EMBEDDER, "--workers", "2",
                           "--gpus-per-worker", "0.5")  # fmt: skip
    assert code == 2 and "2 workers x 0.5 GPU" in err and not out.exists()


def test_a_plan_an_older_version_wrote_is_refused_saying_so(tmp_path: Path) -> None:
    from cnnapps.errors import CnnappsError
    from cnnapps.parts import agree_on_plan, make_plan

    plan = make_plan(["/a.png", "/b.png"], 10, task="classify", model="m.safetensors", model_sha256=None)
    old = {k: v for k, v in plan.items() if k != "model_sha256"}  # what a plan of an older version holds
    (tmp_path / "_plan.json").write_text(json.dumps(old))
    with pytest.raises(CnnappsError) as refused:  # it said "started with another  ()"
        agree_on_plan(tmp_path / "_plan.json", plan)
    assert "started by an older version of cnnapps (its plan has no model_sha256)" in str(refused.value)
    (tmp_path / "_plan.json").write_text(json.dumps({**plan, "extra": 1}))
    with pytest.raises(CnnappsError, match=r"started with another extra \(extra 1 then, null now\)"):
        agree_on_plan(tmp_path / "_plan.json", plan)
