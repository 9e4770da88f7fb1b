"""Batch prediction and index building on a local Ray cluster: parts written whole, the same answers as one process,
a rerun that does only the missing parts, and settings that do not match the parts there refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from cnnapps.batch import read_rows
from cnnapps.parts import ray_session

# small model files (LeNet-5, random weights) the actors load in a fraction of EfficientNet-Lite0's time: what is
# tested is the parts, the rows and the resume, the same for any model
FILES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
CLASSIFIER, EMBEDDER = FILES / "classify.safetensors", FILES / "retrieve.safetensors"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (2 CPUs: two actors), shared by the commands run in-process."""
    with ray_session(num_cpus=2, object_store_memory=80 * 1024 * 1024):
        yield


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2
    from skimage import data

    root = tmp_path_factory.mktemp("gallery")
    for name in ("chelsea", "coffee", "rocket", "astronaut", "horse", "camera", "moon"):
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        cv2.imwrite(str(root / f"{name}.jpg"), np.ascontiguousarray(image[:, :, ::-1]))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_classify_on_ray_matches_one_process_and_resumes(cluster, run_cli, gallery: Path, tmp_path: Path) -> None:
    import cnnapps

    out = tmp_path / "out"
    args = ("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER, "--part-size", "3", "--set", "top_k=2",
            "--json")  # fmt: skip
    code, stdout, stderr = run_cli(*args)
    assert code == 1, stderr  # broken.jpg failed, the rest predicted
    report = json.loads(stdout)
    assert (report["parts"], report["skipped"], report["predicted"]) == (3, 0, 7)
    assert [f["path"] for f in report["failed"]] == [str(gallery / "broken.jpg")]
    assert sorted(p.name for p in out.iterdir()) == ["_plan.json", *(f"part-0000{i}.parquet" for i in range(3))]

    rows = list(read_rows(out))
    paths = sorted(str(p) for p in gallery.iterdir())
    assert [r["source"] for r in rows] == paths  # every input once, in sorted order
    direct = {r.source: r.to_dict() for r in cnnapps.load(CLASSIFIER).predict(paths, top_k=2) if r.ok}
    for row in rows:
        if row["source"].endswith("broken.jpg"):
            assert row["result"] is None and "not an image" in row["error"]
            continue
        assert row["error"] is None
        got, want = row["result"]["predictions"], direct[row["source"]]["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in want] and len(got) == 2
        assert row["result"]["engine"]  # what `cnnapps classify --json` prints, the engine too
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-4)

    import pandas as pd

    assert len(pd.read_parquet(out)) == 8  # a Parquet reader takes the folder as it is (_plan.json is skipped)

    # a lost part (a killed job) is redone by a rerun, the others are kept as they are
    kept = (out / "part-00000.parquet").stat().st_mtime_ns
    (out / "part-00001.parquet").unlink()
    code, stdout, _ = run_cli(*args)
    report = json.loads(stdout)
    assert (report["parts"], report["skipped"], report["predicted"], report["predicted_now"]) == (3, 2, 7, 3)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept
    assert list(read_rows(out)) == rows

    # other settings than the parts there were made with: refused, nothing touched
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER, "--part-size", "3",
                              "--set", "top_k=3")  # fmt: skip
    assert code == 2 and "started with another predict_options" in stderr
    assert list(read_rows(out)) == rows


def test_embeddings_as_json_lines_and_index_build_on_ray(cluster, run_cli, gallery: Path, tmp_path: Path) -> None:
    from cnnapps.apps.retrieve.index import Index

    code, stdout, _ = run_cli("batch", "retrieve", gallery, "--out", tmp_path / "emb", "--model", EMBEDDER,
                              "--format", "jsonl", "--part-size", "4", "--json")  # fmt: skip
    assert code == 1 and json.loads(stdout)["predicted"] == 7
    lines = (tmp_path / "emb" / "part-00000.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["source"].endswith("astronaut.jpg")
    vectors = {
        Path(r["source"]).name: np.array(r["result"]["embedding"]) for r in read_rows(tmp_path / "emb") if r["result"]
    }
    assert len(vectors) == 7 and all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors.values())

    code, stdout, stderr = run_cli("index", "build", gallery, "--index", tmp_path / "ray", "--model", EMBEDDER,
                                   "--ray", "--part-size", "3", "--json")  # fmt: skip
    assert code == 1 and "broken.jpg" in stderr  # indexed; the unreadable file is reported
    assert json.loads(stdout)["items"] == 7 and not (tmp_path / "ray" / "parts").exists()
    code, _, _ = run_cli("index", "build", gallery, "--index", tmp_path / "one", "--model", EMBEDDER, "--json")
    with Index.open(tmp_path / "ray") as built, Index.open(tmp_path / "one") as single:
        rows = built._db.execute(f"SELECT path, vector FROM items WHERE {built._live()}")
        a = {Path(p).name: np.frombuffer(v, dtype=np.float32) for p, v in rows}
        rows = single._db.execute(f"SELECT path, vector FROM items WHERE {single._live()}")
        b = {Path(p).name: np.frombuffer(v, dtype=np.float32) for p, v in rows}
        assert a.keys() == b.keys() == vectors.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)
            np.testing.assert_allclose(a[name], vectors[name], atol=1e-3, err_msg=name)  # the batch run's too


def test_bad_requests_are_one_line_errors(run_cli, gallery: Path, tmp_path: Path, monkeypatch) -> None:
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "a", "--set", "beam=3")
    assert code == 2 and stderr.strip() == "error: beam: not an option of classify's predictor"
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "b", "--format", "csv")
    assert code == 2 and "format 'csv': choose one of parquet, jsonl" in stderr
    (tmp_path / "file").write_text("mine")
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "file")
    assert code == 2 and "a file, not a folder" in stderr and (tmp_path / "file").read_text() == "mine"
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "file" / "b")  # it was exit 3
    assert code == 2 and stderr == f"error: {tmp_path / 'file' / 'b'}: {tmp_path / 'file'} is a file, not a " \
                                   "folder; choose another --out\n"  # fmt: skip
    code, _, stderr = run_cli("batch", "classify", "--out", tmp_path / "c", "--files-from", tmp_path / "none.txt")
    assert code == 2 and "none.txt: no such file" in stderr
    # a model the workers could not load is refused here, in one line, before Ray starts or anything is written
    segment = Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "segment.safetensors"
    for model, said in ((tmp_path / "missing.safetensors", "missing.safetensors: model file not found"),
                        (segment, "segment.safetensors: a segment model, not a classify model")):  # fmt: skip
        code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "e", "--model", model)
        assert code == 2 and stderr.strip() == f"error: {model.parent}/{said}", stderr
        assert not (tmp_path / "e").exists()

    import cnnapps.parts

    monkeypatch.setattr(cnnapps.parts, "ray_available", lambda: False)
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "d")
    assert code == 2 and "Ray is not installed: pip install 'cnnapps[ray]'" in stderr


def test_a_named_model_the_workers_could_not_load_is_refused_before_ray(
    run_cli, gallery: Path, tmp_path: Path, monkeypatch
) -> None:
    """An unknown registry name, and registry weights neither cached nor downloadable (offline), are refused in the
    line `cnnapps classify` gives, before Ray starts or anything is written."""
    import ray
    import torch

    import cnnapps.batch

    def no_ray(*args, **kwargs):
        pytest.fail("Ray was started for a model no worker could load")

    def offline(url, *args, **kwargs):
        raise OSError("no network here")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(cnnapps.batch, "run_on_ray", no_ray)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    image = gallery / "chelsea.jpg"
    for model, said in (("nosuch", "nosuch: unknown backbone"), ("resnet50", "resnet50-11ad3fa6.pth: cannot download")):
        _, _, alone = run_cli("classify", image, "--model", model)
        code, stdout, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "out", "--model", model)
        assert code == 2 and stderr == alone and stderr.startswith(f"error: {said}") and len(stderr.splitlines()) == 1
        assert stdout == "" and not (tmp_path / "out").exists()
    assert "place the file at" in stderr


def test_a_run_whose_workers_failed_before_any_part_leaves_no_plan(run_cli, gallery: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:  # fmt: skip
    """A run whose workers wrote no part (they failed) does not keep the folder for its settings: a rerun with other
    ones goes ahead; a plan of a run still going (no part yet) or with a part refuses other settings as before."""
    import cnnapps.batch
    from cnnapps.errors import CnnappsError

    def failing(*args, **kwargs):
        raise CnnappsError("a Ray worker failed: it could not load the model")
        yield

    monkeypatch.setattr(cnnapps.batch, "run_on_ray", failing)
    out = tmp_path / "out"
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER, "--set", "top_k=3")
    assert code == 2 and "could not load the model" in stderr and not (out / "_plan.json").exists()

    monkeypatch.setattr(cnnapps.batch, "run_on_ray", lambda *args, **kwargs: iter([]))  # workers at it, no part yet
    args = ("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER)
    assert run_cli(*args)[0] == 0
    plan = json.loads((out / "_plan.json").read_text())
    code, _, stderr = run_cli(*args, "--set", "top_k=3")
    assert code == 2 and "started with another predict_options" in stderr
    assert json.loads((out / "_plan.json").read_text()) == plan
    monkeypatch.setattr(cnnapps.batch, "run_on_ray", failing)  # a rerun of the same that fails keeps the plan
    assert run_cli(*args)[0] == 2 and json.loads((out / "_plan.json").read_text()) == plan


def test_what_ray_threads_print_stays_off_stdout(cluster, capsys) -> None:
    """Ray's driver prints raylet messages ("A worker died ...", after it restarts a lost actor) to stdout from a
    thread of its own; inside a session they go to stderr, so `--json` answers stay parseable."""
    import threading

    with ray_session():
        thread = threading.Thread(target=lambda: print("(raylet) A worker died or was killed"))
        thread.start()
        thread.join()
    print('{"answer": 1}')
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answer": 1} and "(raylet) A worker died" in err


def test_raylet_messages_that_come_after_a_session_go_to_stderr(cluster, capsys) -> None:
    """A runtime that outlives a command (this module's cluster, or a service's) can print a lost actor's raylet
    message after the command's block has ended, while the next command writes its answer: it goes to stderr."""
    import threading

    from ray._private import worker

    with ray_session():
        pass
    message = {"lines": ["A worker died or was killed (a late message)"], "pid": "raylet", "is_err": False}
    thread = threading.Thread(target=lambda: worker.print_to_stdstream(message, ignore_prefix=False))
    thread.start()
    thread.join()
    print('{"answer": 2}')
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answer": 2} and "A worker died or was killed (a late message)" in err


def test_a_named_model_is_left_to_the_cluster_given_by_address(gallery: Path, tmp_path: Path, monkeypatch) -> None:
    import cnnapps.batch

    monkeypatch.setattr(cnnapps.batch, "_check_name_loads", lambda *a: pytest.fail("loaded on this machine"))
    asked = {}
    monkeypatch.setattr(cnnapps.batch, "run_on_ray", lambda todo, work, **options: asked.update(options) or iter([]))
    cnnapps.batch.predict_files("classify", [str(p) for p in gallery.iterdir()], tmp_path / "out",
                                model="nosuch", address="ray://head:10001")  # fmt: skip
    assert asked["address"] == "ray://head:10001"


def test_what_no_worker_could_do_is_refused_before_ray(run_cli, gallery: Path, tmp_path: Path, monkeypatch) -> None:
    """An option value the predictor refuses, an engine name that is none, a folder that holds other files: one line
    each, before Ray starts (each was every worker's failure, a minute later, under Ray's retry advice) and with
    nothing written. A model file named another way on a rerun (from another folder) is the same model."""
    import ray

    import cnnapps.batch

    def no_ray(*args, **kwargs):
        pytest.fail("Ray was started for a request no worker could do")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(cnnapps.batch, "run_on_ray", no_ray)
    from cnnapps.engines import why_unavailable

    out = tmp_path / "out"
    cases = [(("--set", "top_k=-3"), "top_k=-3: a whole number of at least 1"),
             (("--set", "top_k=many"), "top_k='many': a whole number of at least 1"),
             (("--engine", "bogus"), "--engine bogus: choose one of auto, eager")]  # fmt: skip
    if why_unavailable("tensorrt"):  # a local cluster's workers run here: 234 lines of Ray's traceback it was
        cases.append((("--engine", "tensorrt"), f"--engine tensorrt: {why_unavailable('tensorrt')}"))
    for option, said in cases:
        code, _, stderr = run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER, *option)
        assert code == 2 and stderr.startswith(f"error: {said}") and len(stderr.splitlines()) == 1, stderr
        assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", mine, "--model", CLASSIFIER)
    assert code == 2 and stderr.strip() == (f"error: {mine}: holds files and no _plan.json (not a batch's parts); "
                                            "choose an empty or new --out")  # fmt: skip
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    monkeypatch.setattr(cnnapps.batch, "run_on_ray", lambda *args, **kwargs: iter([]))
    monkeypatch.chdir(CLASSIFIER.parent)
    assert run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER.name)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER)
    assert code == 0, stderr
    assert json.loads((out / "_plan.json").read_text())["model"] == str(CLASSIFIER)
    plan = json.loads((out / "_plan.json").read_text())  # as versions that kept the name as typed wrote it
    (out / "_plan.json").write_text(json.dumps({**plan, "model": CLASSIFIER.name}))
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", out, "--model", CLASSIFIER)
    assert code == 0, stderr  # the same file (its sha256): not "started with another model"


def test_a_name_that_is_not_utf8_is_a_row_of_a_parquet_part(tmp_path: Path) -> None:
    """Parquet holds UTF-8 only: such a name failed the whole part on every run; its other bytes are written \\xNN."""
    from cnnapps.batch import write_part

    name = str(tmp_path / "caf") + "\udce9.jpg"  # b"caf\xe9.jpg" as Python names it
    write_part(tmp_path / "part-00000.parquet", [{"source": name, "error": f"{name}: not an image", "result": None}])
    import pyarrow.parquet as pq

    (row,) = pq.read_table(tmp_path / "part-00000.parquet").to_pylist()
    assert row["source"] == str(tmp_path / "caf") + "\\xe9.jpg" and row["error"].endswith("\\xe9.jpg: not an image")


def test_a_worker_failure_is_told_by_its_cause_not_by_rays_advice() -> None:
    from cnnapps.errors import CnnappsError
    from cnnapps.parts import _first_cause

    class Wrapped(Exception):  # as Ray's task errors keep the worker's exception
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback ...\nray.data.exceptions.UserCodeException\nTo change retry attempts, ...")
            self.cause = cause

    inner = CnnappsError("model.safetensors: not a classify model")
    assert _first_cause(Wrapped(inner)) == "model.safetensors: not a classify model"
    try:
        raise Wrapped(ValueError("top_k must be positive\nmore"))
    except Wrapped as exc:
        assert _first_cause(exc) == "ValueError: top_k must be positive"
    chained = RuntimeError("outer")
    chained.__cause__ = KeyError("inner")
    assert _first_cause(chained) == "KeyError: 'inner'"


def test_ctrl_c_says_what_was_kept(run_cli, gallery: Path, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C during a batch exited 130 without a word; it now says how many parts are written and that the same
    command goes on."""
    import cnnapps.batch

    def one_part_then_ctrl_c(todo, work, **options):
        (tmp_path / "out" / "part-00000.parquet").write_bytes(b"a part written whole")
        yield {"files": 3, "predicted": 3}
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnapps.batch, "run_on_ray", one_part_then_ctrl_c)
    code, _, stderr = run_cli("batch", "classify", gallery, "--out", tmp_path / "out", "--model", CLASSIFIER,
                              "--part-size", "3")  # fmt: skip
    assert code == 130
    assert stderr.strip().endswith(f"{tmp_path / 'out'}: stopped by SIGINT with 1 of 3 parts written, each whole; the "
                                   "same command goes on with the others")  # fmt: skip
