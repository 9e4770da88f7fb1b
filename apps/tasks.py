"""The task table: every task cnnapps can do, listed once.

Code that needs "every task" (``cnnapps.load``, the command line, the HTTP service, export, the model-file
reader, the tests) loops over :data:`TASKS` instead of naming tasks. Each record names where its parts live as
``"module:attribute"`` strings, imported only when used, so listing tasks (``cnnapps --help``) imports no torch.
Adding a task means one folder under ``apps/`` and one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from cnnapps.errors import CnnappsError


@dataclass(frozen=True)
class Task:
    """One task: its name (the CLI verb and ``task=``), what it does, and where each of its parts lives."""

    name: str
    summary: str  # one line: what the task does
    route: str  # the HTTP route: POST /v1/<route>
    config: str  # the training settings (a TrainConfig dataclass): the `cnnapps train <name>` options
    train: str  # train(config) -> metrics; writes the run folder
    predictor: str  # load(specs: list, task: str, **options) -> a predictor whose predict() returns results
    head: str  # the head adapter: model-file records, rebuilding, and the head's part of a one-pass forward
    result: str  # the result type every prediction of the task returns
    cli: str  # register(app, eval_app, task): the task's own commands (prediction verb, eval, extras)
    exporter: str | None = None  # exportable(spec, task, **options) -> Exportable: what `cnnapps export` writes
    export_formats: tuple[str, ...] = ()  # the formats it can be written in
    runs_onnx: bool = False  # its predictor runs the ONNX files it exports (in onnxruntime)
    quantize: bool = False  # its ONNX graph can be written in int8 or fp16 (`cnnapps export --int8/--fp16`)
    ensemble: bool = False  # several models can answer together (probabilities averaged)
    any_trunk: bool = False  # any model's trunk can do it without a head of its own (embedding its pooled map)
    load_options: tuple[str, ...] = ()  # options its predictor takes when loaded (besides device)
    default_model: str | None = None  # what runs when no model is named
    zoo: str | None = None  # zoo(task, weights=False) -> {name: row}: named ready models (torchvision's COCO R-CNNs)
    route_options: dict[str, tuple[type, Any, Any, Any]] = field(default_factory=dict)  # name: (type, default, lo, hi)
    verb: str = ""  # the command that predicts on images and video [default: the task's name]
    trackable: bool = False  # its results are objects with boxes: video runs can track them (--track)
    folds: str | None = None  # folds(config) -> FoldSource: its data dealt into folds for `train --kfold K`

    @property
    def command(self) -> str:
        """The prediction verb: ``cnnapps <command> PATHS``."""
        return self.verb or self.name

    def part(self, which: str) -> Any:
        """Import and return one of the parts (``"config"``, ``"train"``, ``"predictor"``, ...)."""
        return resolve(getattr(self, which))

    @property
    def takes(self) -> tuple[str, ...]:
        """The options this task's predictor takes when loaded: device, head and its own."""
        return ("device", "head", *self.load_options)

    @property
    def runs_as_it_is(self) -> bool:
        """Whether its predictor runs only in PyTorch, as it is (takes no ``engine``: only auto or eager fit)."""
        return "engine" not in self.load_options

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options of ``given`` that this task's predictor takes (:attr:`takes`)."""
        return {k: v for k, v in given.items() if k in self.takes}

    def zoo_models(self, weights: bool = False) -> dict[str, dict[str, Any]]:
        """The task's named ready models, each with its description (and the state of its weights when asked)."""
        return self.part("zoo")(self.name, weights) if self.zoo else {}


def resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_DETECT = "cnnapps.apps.detect"

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "classify",
            "Classify images: top-k labels with probabilities.",
            route="classify",
            config="cnnapps.apps.classify.config:ClassifyConfig",
            train="cnnapps.apps.classify.train:train_classifier",
            predictor="cnnapps.apps.classify.predictor:load_predictor",
            head="cnnapps.apps.classify.model:HEAD",
            result="cnnapps.results:ClassificationResult",
            cli="cnnapps.apps.classify.cli:register",
            exporter="cnnapps.apps.classify.model:exportable",
            export_formats=("onnx", "torchscript"),
            runs_onnx=True,
            quantize=True,
            ensemble=True,
            load_options=("engine", "batch_size", "workers", "max_pixels"),
            default_model="efficientnet_lite0",
            route_options={"top_k": (int, 5, 1, 20)},
            folds="cnnapps.apps.common.kfold:labelled_folds",
        ),
        Task(
            "retrieve",
            "Embed images as unit vectors; index, search and find duplicates.",
            route="embed",
            config="cnnapps.apps.retrieve.config:RetrieveConfig",
            train="cnnapps.apps.retrieve.train:train_retrieval",
            predictor="cnnapps.apps.retrieve.embedder:load_embedder",
            head="cnnapps.apps.retrieve.embedder:HEAD",
            result="cnnapps.results:EmbeddingResult",
            cli="cnnapps.apps.retrieve.cli:register",
            exporter="cnnapps.apps.retrieve.embedder:exportable",
            export_formats=("onnx", "torchscript"),
            runs_onnx=True,
            quantize=True,
            load_options=("engine", "batch_size", "workers", "pooling"),
            any_trunk=True,
            default_model="efficientnet_lite0",
            verb="embed",
            folds="cnnapps.apps.common.kfold:labelled_folds",
        ),
        *(
            Task(
                name,
                summary,
                route=name,
                config=f"{_DETECT}.config:DetectConfig",
                train=f"{_DETECT}.train:train_detector",
                predictor=f"{_DETECT}.predictor:load_predictor",
                head=f"{_DETECT}.model:HEAD",
                result="cnnapps.results:DetectionResult",
                cli=f"{_DETECT}.cli:register",
                exporter=f"{_DETECT}.model:exportable",
                export_formats=("onnx",),
                quantize=True,
                load_options=("score_threshold", "batch_size", "tile", "overlap", "max_pixels", "engine", "embed"),
                default_model=default,
                zoo=f"{_DETECT}.zoo:zoo_models",
                route_options={"draw": (bool, False, None, None)},
                trackable=True,
                folds=f"{_DETECT}.folds:coco_folds",
            )
            for name, summary, default in (
                ("detect", "Find objects: boxes, labels and scores (Faster R-CNN).", "fasterrcnn_resnet50_fpn"),
                ("segment", "Find objects with instance masks (Mask R-CNN).", "maskrcnn_resnet50_fpn"),
                ("pose", "Find people and their keypoints (Keypoint R-CNN).", "keypointrcnn_resnet50_fpn"),
            )
        ),
        Task(
            "caption",
            "Describe images in words (attention decoders, beam search).",
            route="caption",
            config="cnnapps.apps.caption.config:CaptionConfig",
            train="cnnapps.apps.caption.train:train_captioner",
            predictor="cnnapps.apps.caption.predictor:load_predictor",
            head="cnnapps.apps.caption.model:HEAD",
            result="cnnapps.results:CaptionResult",
            cli="cnnapps.apps.caption.cli:register",
            load_options=("beam", "max_len", "batch_size", "engine"),
        ),
        Task(
            "semantic",
            "Label every pixel with a class (FCN, DeepLabV3, LR-ASPP or FPN heads).",
            route="semantic",
            config="cnnapps.apps.semantic.config:SemanticConfig",
            train="cnnapps.apps.semantic.train:train_semantic",
            predictor="cnnapps.apps.semantic.predictor:load_predictor",
            head="cnnapps.apps.semantic.model:HEAD",
            result="cnnapps.apps.semantic.result:SemanticResult",
            cli="cnnapps.apps.semantic.cli:register",
            exporter="cnnapps.apps.semantic.model:exportable",
            export_formats=("onnx",),
            runs_onnx=True,
            load_options=("batch_size", "tile", "overlap", "max_pixels"),
            default_model="deeplabv3_resnet50",
            zoo="cnnapps.apps.semantic.zoo:zoo_models",
            route_options={"draw": (bool, False, None, None)},
        ),
        Task(
            "panoptic",
            "Things and stuff: a segment for every pixel (Mask R-CNN and semantic heads on one trunk).",
            route="panoptic",
            config="cnnapps.apps.semantic.config:PanopticConfig",
            train="cnnapps.apps.semantic.panoptic:train_panoptic",
            predictor="cnnapps.apps.semantic.panoptic:load_predictor",
            head="cnnapps.apps.semantic.panoptic:HEAD",
            result="cnnapps.apps.semantic.result:PanopticResult",
            cli="cnnapps.apps.semantic.cli:register",
            load_options=("batch_size", "max_pixels"),
            route_options={"draw": (bool, False, None, None)},
        ),
    )
}


def get_task(name: str) -> Task:
    """The record of ``name``; an unknown name is a one-line error listing the tasks."""
    try:
        return TASKS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), TASKS, 1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CnnappsError(f"task {name!r} is not known ({hint}tasks: {', '.join(TASKS)})") from None


def runnable_files() -> str:
    """What ``--model`` takes as a file, in words (for refusing files that are something else)."""
    onnx = [t.name for t in TASKS.values() if t.runs_onnx]
    return f"cnnapps runs model files (.safetensors) and the ONNX files of {', '.join(onnx[:-1])} and {onnx[-1]} models"
