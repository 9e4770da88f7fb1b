from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnapps import __version__


def test_help_does_not_import_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnapps", "--help"], capture_output=True, text=True, check=True
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "summary" in result.stdout and "models" in result.stdout
    assert "typer" in imported
    assert not {m for m in imported if m.split(".")[0] in {"torch", "torchvision", "timm", "cv2", "numpy"}}


def test_version(run_cli) -> None:
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"cnnapps {__version__}"


def test_summary_json(run_cli) -> None:
    code, out, _ = run_cli("summary", "lenet5", "--json")
    data = json.loads(out)
    assert code == 0 and data["total_params"] == 61_706 and data["input_size"] == [1, 32, 32]


def test_summary_table(run_cli) -> None:
    code, out, _ = run_cli("summary", "vgg16", "--input", "64")
    assert code == 0
    assert "conv1_1" in out and "64x64x64" in out and "total params: 138,357,544" in out
    assert "forward memory per image" in out


def test_summary_of_a_size_the_model_cannot_take_is_one_line(run_cli) -> None:
    code, _, err = run_cli("summary", "lenet5", "--input", "64")  # its FC head takes 32 x 32 alone
    assert code == 2 and err.startswith("error: input 64x64: lenet5 cannot take images of this size (RuntimeError: ")
    assert err.strip().endswith("its own size is 32x32") and err.count("\n") == 1
    for size in ("0", "4096"):  # out of range: said before a model is built (no 4096 x 4096 pass through vgg16)
        code, _, err = run_cli("summary", "vgg16", "--input", size)
        assert code == 2 and "Invalid value for '--input'" in err


def test_models_lists_weight_states(run_cli) -> None:
    code, out, _ = run_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["efficientnet_lite0"]["weights"]["state"] == "bundled"
    assert rows["resnet50"]["weights"]["state"] == "downloadable"
    assert rows["resnet50"]["weights"]["url"].startswith("https://download.pytorch.org/")
    assert rows["lenet5"]["weights"]["state"] == "none"
    mask = rows["maskrcnn_resnet50_fpn"]
    assert mask["task"] == "segment" and mask["weights"]["state"] == "downloadable"
    assert mask["weights"]["url"].endswith("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    assert rows["keypointrcnn_resnet50_fpn"]["task"] == "pose"
    code, out, _ = run_cli("models", "--timm", "resnet1*")
    assert code == 0 and "timm:resnet18" in out and "bundled" in out


def test_errors_are_one_line_without_traceback(run_cli) -> None:
    code, _out, err = run_cli("summary", "resnet05")
    assert code == 2
    assert err.strip().startswith("error: resnet05: unknown backbone; did you mean resnet50")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_debug_shows_the_traceback_and_keeps_the_exit_code(run_cli) -> None:
    code, _, err = run_cli("--debug", "summary", "resnet05")
    assert code == 2
    assert err.startswith("Traceback") and "UnknownModelError" in err
    assert err.strip().splitlines()[-1].startswith("error: resnet05: unknown backbone")
    code, _, err = run_cli("summary", "resnet05")
    assert code == 2 and "Traceback" not in err


def test_an_unexpected_failure_has_its_own_exit_code(run_cli, monkeypatch) -> None:
    import cnnapps.backbones

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(cnnapps.backbones, "summarize", broken)
    code, _, err = run_cli("summary", "vgg16")
    assert code == 3  # not 1 (some inputs failed, the rest done) nor 2 (bad input to the command)
    assert err.strip() == "error: RuntimeError: something inside broke (run with --debug for the traceback)"


def test_console_script_exit_code() -> None:
    result = subprocess.run([sys.executable, "-m", "cnnapps", "summary", "nope_net"], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: nope_net")


def test_models_says_when_no_timm_model_matches(run_cli) -> None:
    code, out, err = run_cli("models", "--timm", "zzz*")
    assert code == 0 and "no timm model" in err and "'zzz*'" in err
    assert "efficientnet_lite0" in out  # the registered backbones are still listed


def test_dedup_refuses_a_threshold_outside_cosine_range(run_cli, tmp_path) -> None:
    code, _, err = run_cli("dedup", str(tmp_path), "--threshold", "1.5")
    assert code == 2 and "--threshold" in err


@pytest.mark.parametrize(
    ("task", "name", "hint"),
    [
        ("segment", "maskrcnn_resnet50", "; did you mean maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2?"),
        ("segment", "keypointrcnn", ""),  # a pose model's name is no suggestion for segment
        ("segment", "resnet50", "maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, or a model file: train one on it"),
        ("pose", "keypointrcnn", "; did you mean keypointrcnn_resnet50_fpn?"),
        ("detect", "foo", ""),
    ],
)
def test_unknown_detector_names_suggest_only_the_tasks_own(run_cli, tmp_path, task, name, hint) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not read: the model is refused first")
    code, _, err = run_cli(task, image, "--model", name)
    assert code == 2 and len(err.strip().splitlines()) == 1
    backbone = name == "resnet50"  # a trunk to train the task on, not an unknown name; nor are semantic models listed
    said = (
        f"a backbone, not a {task} model (one of "
        if backbone
        else f"unknown {task} model (not a model file, nor one of "
    )
    assert err.startswith(f"error: {name}: {said}")
    assert err.strip().endswith(")") if not hint else hint in err
    assert "fcn_" not in err and "deeplab" not in err and ("keypointrcnn_" not in err or task == "pose")


def test_a_model_file_of_another_task_is_named_as_such(run_cli, trained, tmp_path) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not read: the model is refused first")
    code, _, err = run_cli("segment", image, "--model", trained[0] / "model.safetensors")
    assert code == 2 and "a classify model, not a segment model" in err and "unknown" not in err


def _run_counting_imports(*args: object) -> tuple[int, str, set[str]]:
    """``python -m cnnapps ARGS`` in a subprocess: (exit code, its error lines, the top-level packages it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnnapps", *map(str, args)],
                            capture_output=True, text=True)  # fmt: skip
    lines = result.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    return result.returncode, "\n".join(line for line in lines if not line.startswith("import time:")), imported


def test_train_refuses_an_existing_run_before_loading_torch(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"an earlier run")
    (tmp_path / "data").mkdir()
    code, err, imported = _run_counting_imports("train", "classify", "--data", tmp_path / "data", "--out",
                                                tmp_path / "run")  # fmt: skip
    assert code == 2 and "already holds a training run" in err
    assert not imported & {"torch", "lightning"}


def test_export_refuses_a_format_of_another_task_before_loading_torch(tmp_path) -> None:
    code, err, imported = _run_counting_imports("export", "--model", "maskrcnn_resnet50_fpn", "--format",
                                                "torchscript", "--out", tmp_path / "m.pt")  # fmt: skip
    assert code == 2 and "torchscript export takes classify, retrieve models, not segment" in err
    assert "torch" not in imported and not (tmp_path / "m.pt").exists()


def test_help_pages_name_arguments_plainly_and_cut_no_command_description(run_cli) -> None:
    import typer

    from cnnapps.cli import app

    group = typer.main.get_command(app)
    code, top, _ = run_cli("--help")
    assert code == 0 and "..." not in top.split("Commands:")[1]  # every command's first line fits
    pages = [("",)]
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        pages += [(name, sub) for sub in subcommands] if subcommands else [(name,)]
    for words in pages:
        code, out, _ = run_cli(*[w for w in words if w], "--help")
        assert code == 0, words
        assert "<list[" not in out and "{" not in out.split("\n")[0], (words, out.split("\n")[0])
    code, out, _ = run_cli("predict", "--help")
    assert out.startswith("Usage: cnnapps predict [OPTIONS] MODEL PATHS...")


def test_every_option_of_every_command_says_what_it_is() -> None:
    import click
    import typer

    from cnnapps.cli import app

    silent = []

    def walk(command: click.Command, words: list[str]) -> None:
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, [*words, name])
            return
        context = click.Context(command)
        for param in command.params:
            record = param.get_help_record(context)
            if record and param.name != "help" and not record[1].split("[default")[0].split("[x")[0].strip():
                silent.append(f"{' '.join(words)} {record[0]}")

    walk(typer.main.get_command(app), [])
    assert not silent
