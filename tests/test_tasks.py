"""The task table: every record's parts exist and fit their roles; the front loops over the table instead of naming
tasks; the layers (base, apps, front) import each other only downwards and without circles."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cnnapps.apps.tasks import TASKS, get_task
from cnnapps.errors import CnnappsError

ROOT = Path(__file__).resolve().parents[1]
RECORDS = list(TASKS.values())


@pytest.mark.parametrize("task", RECORDS, ids=lambda t: t.name)
def test_every_part_of_every_task_resolves_and_fits_its_role(task) -> None:
    from cnnapps.apps.common.config import TrainConfig
    from cnnapps.export import FORMATS
    from cnnapps.results import Result

    config = task.part("config")
    assert issubclass(config, TrainConfig) and dataclasses.is_dataclass(config)
    assert all(f.metadata.get("help") for f in dataclasses.fields(config) if f.metadata.get("cli", True)), task.name
    assert callable(task.part("train")) and callable(task.part("predictor")) and callable(task.part("cli"))
    assert issubclass(task.part("result"), Result)
    head = task.part("head")
    for method in ("describe", "build", "from_v1", "predict_shared"):
        assert callable(getattr(head, method)), (task.name, method)
    assert isinstance(head.trunk_path, str) and head.trunk_path
    assert set(task.export_formats) <= set(FORMATS)
    assert bool(task.exporter) == bool(task.export_formats)
    assert not task.quantize or "onnx" in task.export_formats  # int8 and fp16 are ONNX graphs
    assert set(task.route_options) <= {"top_k", "draw"}
    assert task.folds is None or callable(task.part("folds"))  # what `train --kfold` deals into folds
    for name in task.zoo_models():
        from cnnapps.api import task_of

        assert task_of(name) == task.name


def test_routes_are_unique_and_unknown_tasks_are_one_line_errors() -> None:
    routes = [t.route for t in RECORDS]
    assert len(routes) == len(set(routes))
    with pytest.raises(CnnappsError, match=r"task 'clasify' is not known \(did you mean classify\?"):
        get_task("clasify")


@pytest.mark.parametrize("task", RECORDS, ids=lambda t: t.name)
def test_train_command_offers_every_config_field(run_cli, task) -> None:
    code, out, _ = run_cli("train", task.name, "--help")
    assert code == 0
    for f in dataclasses.fields(task.part("config")):
        flag = "--" + f.name.replace("_", "-")
        assert (flag in out) == f.metadata.get("cli", True), (task.name, flag)
    assert "--config" in out and "--json" in out


def test_train_options_are_checked_by_type_with_one_line_errors(run_cli, tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: here\nepochs: two\n")
    code, _, err = run_cli("train", "classify", "--config", recipe)
    assert code == 2 and err.strip() == f"error: {recipe}: epochs: expected an integer, not 'two'"
    recipe.write_text("data: here\nlr: 1e-3\ninput_size: -32\n")  # YAML reads 1e-3 as a string: it is a number
    code, _, err = run_cli("train", "classify", "--config", recipe)
    assert code == 2 and err.strip() == "error: input_size: must be between 8 and 4096 pixels, not -32"
    code, _, err = run_cli("train", "retrieve", "--data", "x", "--loss", "contrastive")
    assert code == 2 and "loss: 'contrastive' is not one of arcface, multisimilarity, triplet" in err


def test_listing_the_commands_imports_no_torch_numpy_or_task_code() -> None:
    code = (
        "import sys, cnnapps.cli\n"
        "heavy = {m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'lightning', 'cv2')}\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inference_of_every_task_imports_no_training_stack(tmp_path: Path) -> None:
    """One process answers with a model of each task (the bundled classifier, the model files kept in
    tests/fixtures, a semantic model made here) and builds and searches an index: none of it imports Lightning,
    albumentations or pytorch-metric-learning (panoptic runs these same predictors), nor wandb, which timm imports
    whenever it is installed (a second of each load)."""
    import cv2
    import numpy as np

    from cnnapps.apps.semantic.model import create_semantic, save_semantic
    from cnnapps.backbones.preprocess import Preprocess

    semantic = create_semantic("fpn", "timm:test_resnet", class_names=["a", "b"], backbone_weights=None,
                               head_channels=8).eval()  # fmt: skip
    save_semantic(tmp_path / "semantic.safetensors", semantic, Preprocess(input_size=(3, 64, 64), resize=64))
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    files = ROOT / "tests" / "fixtures" / "model_files_v1"
    code = (
        "import sys, cnnapps\n"
        "from cnnapps.apps.retrieve.embedder import Embedder\n"
        "from cnnapps.apps.retrieve.index import Index\n"
        "from cnnapps.apps.retrieve.search import retrieve\n"
        f"photo, files = {str(photo)!r}, {str(files)!r}\n"
        "models = [None, *(f'{files}/{t}.safetensors' for t in ('classify', 'segment', 'pose', 'caption')),\n"
        f"          {str(tmp_path / 'semantic.safetensors')!r}]\n"
        "said = lambda r: f'{type(r).__name__} {r.ok}'\n"
        "answered = [said(cnnapps.load(m).predict([photo])[0]) for m in models]\n"
        f"e = Embedder(files + '/retrieve.safetensors'); i = Index.create({str(tmp_path / 'idx')!r}, e.describe())\n"
        "i.add([photo], embedder=e)\n"
        "answered.append(said(retrieve(Index.open(i.path), [photo], 1)[0]))\n"
        "heavy = ('lightning', 'pytorch_lightning', 'albumentations', 'pytorch_metric_learning', 'wandb')\n"
        "print(answered, sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    kinds = ("Classification", "Classification", "Detection", "Detection", "Caption", "Semantic", "Retrieval")
    assert out.strip() == f"{[f'{kind}Result True' for kind in kinds]} []"


# -- layers -------------------------------------------------------------------------------------------------------

BASE = ("cnnapps.errors", "cnnapps.files", "cnnapps.bundle", "cnnapps.results", "cnnapps.runtime",
        "cnnapps.exported", "cnnapps.engines", "cnnapps.quantize", "cnnapps.terminal", "cnnapps.parts",
        "cnnapps.yamltext", "cnnapps.backbones", "cnnapps.datasets")  # fmt: skip
FRONT = ("cnnapps.api", "cnnapps.cli", "cnnapps.serve", "cnnapps.export", "cnnapps.batch")


def _modules() -> dict[str, Path]:
    """Every module of the package by its import name (the repository folders install inside ``cnnapps``)."""
    found = {}
    for folder, package in (("cnnapps", "cnnapps"), ("apps", "cnnapps.apps"), ("backbones", "cnnapps.backbones"),
                            ("datasets", "cnnapps.datasets")):  # fmt: skip
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("cnnapps")}


def _layer(module: str) -> str:
    if module.startswith(BASE):
        return "base"
    if module.startswith(FRONT) or (module.startswith("cnnapps.apps.") and module.endswith(".cli")):
        return "front"  # a task's own commands are its part of the front
    if module.startswith("cnnapps.apps"):
        return "apps"
    return "package"


def test_layers_import_only_downwards() -> None:
    order = {"base": 0, "apps": 1, "front": 2}
    wrong = []
    for module, path in _modules().items():
        layer = _layer(module)
        if layer not in order:
            continue
        for imported in _imports(path, top_level_only=False):
            target = _layer(imported)
            if target in order and order[target] > order[layer]:
                wrong.append(f"{module} ({layer}) imports {imported} ({target})")
    assert wrong == []


def test_modules_import_each_other_without_circles() -> None:
    modules = _modules()
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in modules and i != m} for m, p in modules.items()}
    seen: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        seen[module] = 1
        for nxt in graph[module]:
            assert seen.get(nxt) != 1, " -> ".join([*trail, module, nxt])
            if nxt not in seen:
                visit(nxt, [*trail, module])
        seen[module] = 2

    for module in graph:
        if module not in seen:
            visit(module, [])


def test_the_front_names_no_task() -> None:
    """Code that serves every task (api, export, serve, the command line) loops over the table: no task name in
    a comparison or a collection of its own (the retrieval index's own route is the one allowed exception)."""
    names = set(TASKS)
    found = []
    front = [p for m, p in _modules().items() if m.startswith(FRONT)]
    for path in front:
        for node in ast.walk(ast.parse(path.read_text())):
            values: list[ast.AST] = []
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = list(node.elts)
            elif isinstance(node, ast.Dict):
                values = [k for k in node.keys if k is not None]
            for value in values:
                if isinstance(value, ast.Constant) and value.value in names:
                    found.append(f"{path.relative_to(ROOT)}:{value.lineno} {value.value!r}")
    allowed = [f for f in found if f.startswith("cnnapps/serve/app.py") and f.endswith("'retrieve'")]
    assert [f for f in found if f not in allowed] == []
