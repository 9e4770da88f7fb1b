from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def photos(tmp_path_factory, chelsea) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    cv2.imwrite(str(root / "cat.jpg"), chelsea[:, :, ::-1])
    cv2.imwrite(str(root / "nested" / "coffee.png"), data.coffee()[:, :, ::-1])
    (root / "notes.txt").write_text("not an image, and not picked up from the folder")
    return root


def test_classify_folder_json(run_cli, photos: Path) -> None:
    code, out, _ = run_cli("classify", photos, "--json", "-k", "2")
    results = json.loads(out)
    assert code == 0
    assert [Path(r["path"]).name for r in results] == ["cat.jpg", "coffee.png"]
    assert results[0]["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert results[1]["predictions"][0]["label"] in {"espresso", "cup", "coffee mug"}
    assert len(results[0]["predictions"]) == 2 and set(results[0]["predictions"][0]) == {"label", "index", "score"}
    assert {r["engine"] for r in results} == {"jit"}  # the engine that gave each answer (auto on a CPU: jit)


def test_the_json_answer_names_the_engine_that_ran(run_cli, photos: Path) -> None:
    code, out, _ = run_cli("classify", photos / "cat.jpg", photos / "gone.jpg", "--json", "--engine", "onnxruntime")
    answer, failed = json.loads(out)
    assert code == 1 and answer["engine"] == "onnxruntime" and "engine" not in failed  # nothing ran on a missing file


def test_classify_reports_bad_inputs_and_exits_1(run_cli, photos: Path) -> None:
    code, out, err = run_cli("classify", photos / "cat.jpg", photos / "notes.txt", photos / "gone.jpg", "--json")
    results = json.loads(out)
    assert code == 1
    assert [("error" in r) for r in results] == [False, True, True]
    assert "2 of 3 inputs failed" in err and "gone.jpg: no such file" in err


def test_classify_table_and_glob(run_cli, photos: Path) -> None:
    code, out, _ = run_cli("classify", str(photos / "*.jpg"), "-k", "1")
    assert code == 0 and "cat.jpg" in out and "coffee" not in out


def test_classify_errors_exit_2(run_cli, photos: Path) -> None:
    code, _, err = run_cli("classify", photos / "nested", "--model", "resnet05")
    assert code == 2 and err.startswith("error: resnet05: unknown backbone")
    code, _, err = run_cli("classify", str(photos / "*.tif"))  # a glob that matches nothing: nothing ran
    assert code == 2 and "no file matches" in err


def test_train_eval_and_visualize_commands(run_cli, colour_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "classify", "--data", colour_set, "--backbone", "lenet5", "--weights", "none", "--epochs", "2"]
    args += ["--batch-size", "8", "--workers", "0", "--augment", "creative", "--out", run, "--json"]
    code, out, _ = run_cli(*args)
    assert code == 0, out
    assert set(json.loads(out[out.index("{") :])) >= {"val_top1", "val_top5", "val_loss", "epochs"}
    model = run / "model.safetensors"

    code, out, _ = run_cli("eval", "classify", "--model", model, "--data", colour_set, "--json")
    report = json.loads(out)
    assert code == 0 and report["n"] == 30 and len(report["confusion"]) == 3
    assert set(report["per_class"]) == {"blue", "green", "red"}

    picture = tmp_path / "cam.png"
    image = next((colour_set / "red").glob("*.png"))
    code, out, _ = run_cli("visualize", "gradcam", image, "--model", model, "--out", picture)
    assert code == 0 and picture.is_file() and "Grad-CAM for" in out
    code, _, err = run_cli("visualize", "gradcam", image, "--model", model, "--out", picture)
    assert code == 2 and "already exists" in err
    code, _, _ = run_cli("visualize", "filters", "--model", model, "--out", tmp_path / "f.png")
    assert code == 0 and cv2.imread(str(tmp_path / "f.png")) is not None
    (tmp_path / "m.onnx").write_bytes(b"")  # refused by name, before anything is read
    for verb in (["gradcam", image], ["filters"]):
        code, _, err = run_cli("visualize", *verb, "--model", tmp_path / "m.onnx", "--out", tmp_path / "o.png")
        assert code == 2 and "no layers to look inside; give the model file it was exported from" in err


def test_train_config_errors_are_one_line(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "classify", "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert code == 2 and err.strip().count("\n") == 0 and "nowhere" in err


def _tiny_images(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), np.full((40, 40, 3), 40 * i, np.uint8))
    return root


def test_eval_reads_the_data_as_the_model_reads_it(run_cli, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A multi-label model scores the images with no label too (its negatives), even where no row has two labels;
    a single-label model skips them, and neither names an option that eval does not have."""
    from cnnapps.apps.modelfile import read_model_file, write_model_file

    fixture = Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "classify.safetensors"  # red, green, blue
    model_file = read_model_file(fixture)
    info = model_file.heads["classify"]
    info.kwargs = {**info.kwargs, "multilabel": True, "thresholds": [0.5, 0.5, 0.5]}
    tagger = tmp_path / "tagger.safetensors"
    write_model_file(tagger, model_file.trunk, model_file.trunk_tensors(),
                     {"classify": (info, model_file.head_tensors("classify"))}, model_file.preprocess)  # fmt: skip
    data = _tiny_images(tmp_path / "data", 4)
    (data / "labels.csv").write_text("path,labels\n0.png,red\n1.png,blue\n2.png,\n3.png,\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, out, err = run_cli("eval", "classify", "--model", tagger, "--data", data / "labels.csv", "--json")
    report = json.loads(out)
    assert code == 0 and report["multilabel"] is True and report["n"] == 4, err
    assert not [r for r in caplog.records if "row skipped" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, out, err = run_cli("eval", "classify", "--model", fixture, "--data", data, "--json")
    assert code == 0 and json.loads(out)["n"] == 2, err
    skipped = [r.getMessage() for r in caplog.records if "row skipped" in r.getMessage()]
    assert len(skipped) == 2 and skipped[0].endswith("no label for '2.png'; row skipped (the model gives each image "
                                                     "one class)")  # fmt: skip
    assert "--multilabel" not in err + "".join(skipped)


LENET = Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "classify.safetensors"  # red, green, blue


def test_eval_counts_a_row_whose_image_is_missing_as_a_failed_input(run_cli, tmp_path: Path, caplog) -> None:
    """The row was logged and dropped and eval exited 0 with "failed": [], while an unreadable image in its place
    exited 1 and was listed: both are inputs that failed."""
    data = _tiny_images(tmp_path, 2)
    (data / "broken.png").write_bytes(b"not a picture")
    (data / "list.csv").write_text("path,label\n0.png,red\ngone.png,blue\n1.png,green\nbroken.png,red\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, out, err = run_cli("eval", "classify", "--model", LENET, "--data", data / "list.csv", "--json")
    report = json.loads(out)
    assert code == 1 and report["n"] == 2, err
    assert [Path(f["path"]).name for f in report["failed"]] == ["gone.png", "broken.png"]
    assert report["failed"][0]["error"] == f"no such file (line 3 of {data / 'list.csv'})"
    assert not [r for r in caplog.records if "row skipped" in r.getMessage()]  # said once, as a failure
    code, out, err = run_cli("eval", "classify", "--model", LENET, "--data", data / "list.csv")
    assert code == 1 and f"  {data / 'gone.png'}: no such file (line 3 of {data / 'list.csv'})" in err.splitlines()


def test_the_table_says_how_many_classes_it_shows_all_at_one_precision(run_cli, tmp_path: Path, monkeypatch) -> None:
    """--top-k 20 on a 3-class model headed its column "next 19" over 2 entries, and printed those at 0.1 % steps
    beside a top-1 at 1 % steps."""
    monkeypatch.chdir(_tiny_images(tmp_path, 1))  # a short name: the table's width does not cut the row
    code, out, err = run_cli("classify", "0.png", "--model", LENET, "--top-k", "20")
    assert code == 0, err
    assert "next 2" in out and "next 19" not in out
    row = next(line for line in out.splitlines() if "0.png" in line)
    scores = re.findall(r"\d+(?:\.\d+)?%", row)
    assert len(scores) == 3 and all(re.fullmatch(r"\d+\.\d%", s) for s in scores), row


class _Stub:
    """A classifier answering "red" for every input, whose ``stop_at``-th call is stopped by Ctrl-C."""

    batch_size = 1
    multilabel = False
    engine = "eager"

    def __init__(self, stop_at: int | None = None, failing: tuple[str, ...] = ()) -> None:
        self.calls, self.stop_at, self.failing = 0, stop_at, failing

    def predict(self, inputs, top_k=5, progress=None, **options):
        from cnnapps.results import ClassificationResult, Prediction

        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        answer = [Prediction("red", 0, 0.5), Prediction("blue", 2, 0.25)]
        return [
            ClassificationResult(p, error="file is empty")
            if Path(p).name in self.failing
            else ClassificationResult(p, predictions=answer, engine=self.engine)
            for p in inputs
        ]


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_prints_the_answers_so_far_and_exits_130(run_cli, tmp_path: Path, monkeypatch, as_json: bool) -> None:
    """Typer made Ctrl-C a silent exit 130: the answers computed were dropped, and --json printed nothing."""
    import cnnapps.api
    from cnnapps.terminal import PART_BATCHES

    for i in range(3 * PART_BATCHES):  # the stub reads none of them
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    stub = _Stub(stop_at=2, failing=("01.png",))  # the second part is stopped
    monkeypatch.setattr(cnnapps.api, "load", lambda *a, **k: stub)
    code, out, err = run_cli("classify", tmp_path, *(["--json"] if as_json else []))
    assert code == 130  # not 1: the failed input is reported, the run was still stopped
    assert err.splitlines() == [f"1 of {PART_BATCHES} inputs failed:", f"  {tmp_path / '01.png'}: file is empty",
                                f"stopped by Ctrl-C after {PART_BATCHES} of {3 * PART_BATCHES} images (their answers "
                                "printed)"]  # fmt: skip
    if as_json:
        answers = json.loads(out)
        assert [Path(a["path"]).name for a in answers] == [f"{i:02d}.png" for i in range(PART_BATCHES)]
    else:
        assert out.count("red") == PART_BATCHES - 1


def test_ctrl_c_outside_a_command_goes_on_as_it_came() -> None:
    """The Python API's callers get their KeyboardInterrupt: only a command prints what was done and says so."""
    from cnnapps.terminal import predict_images

    with pytest.raises(KeyboardInterrupt):
        predict_images(_Stub(stop_at=1), ["a.png"], "classifying")


def test_a_failed_input_whose_name_holds_a_newline_is_reported_on_one_line(run_cli, tmp_path: Path,
                                                                           monkeypatch) -> None:  # fmt: skip
    import cnnapps.api

    odd = _tiny_images(tmp_path, 1) / "bad\nname.png"
    odd.write_bytes(b"")
    monkeypatch.setattr(cnnapps.api, "load", lambda *a, **k: _Stub(failing=(odd.name,)))
    code, out, err = run_cli("classify", tmp_path, "--json")
    assert code == 1 and len(json.loads(out)) == 2
    assert err.splitlines() == ["1 of 2 inputs failed:", f"  {tmp_path}/bad\\nname.png: file is empty"]
    code, _, err = run_cli("classify", tmp_path / "gone\nphoto-*.png")  # a one-line error names it too
    assert code == 2 and err == f"error: {tmp_path}/gone\\nphoto-*.png: no file matches\n"


@pytest.mark.parametrize("verb", ["caption", "detect", "segment", "pose"])
def test_every_image_verb_prints_its_answers_so_far_at_ctrl_c(run_cli, tmp_path: Path, monkeypatch, verb) -> None:
    """Only classify and embed kept their answers: the other verbs exited 130 without a word."""
    import cnnapps.api
    from cnnapps.results import CaptionResult, DetectionResult
    from cnnapps.terminal import PART_BATCHES

    class Stopped(_Stub):
        def predict(self, inputs, progress=None, **options):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            if verb == "caption":
                return [CaptionResult(p, caption="a red square", engine=self.engine) for p in inputs]
            return [DetectionResult(p, width=8, height=8, engine=self.engine) for p in inputs]

    for i in range(2 * PART_BATCHES):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    monkeypatch.setattr(cnnapps.api, "load", lambda *a, **k: Stopped(stop_at=2))
    code, out, err = run_cli(verb, tmp_path, "--json", "--model", "m.safetensors")  # the stub is what loads
    assert code == 130, err
    assert len(json.loads(out)) == PART_BATCHES
    assert err.splitlines()[-1] == (f"stopped by Ctrl-C after {PART_BATCHES} of {2 * PART_BATCHES} images (their "
                                    "answers printed)")  # fmt: skip
