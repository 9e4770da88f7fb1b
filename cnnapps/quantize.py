"""Smaller exported graphs: post-training static INT8 and fp16, each checked against the fp32 graph.

- INT8: onnxruntime's ``quantize_static`` in QDQ format, int8 weights per channel (7 bits) and uint8 activations
  with ranges from calibration images (onnxruntime's 99.999th percentile), fed through the model's own
  preprocessing (its export metadata); fully connected layers stay fp32.
- fp16: onnxruntime's float16 converter, inputs and outputs kept fp32 so callers do not change; meant for GPUs
  (on a CPU onnxruntime casts back to fp32 around the ops it has no fp16 kernel for, which is slower than fp32).
- The check: fp32 and the smaller graph run on held-out images and are compared (top-1 agreement, cosine
  similarity of embeddings, or agreement of detected boxes); the numbers go into the file's metadata.

Base layer: imports no app. Each task's exporter says how its graph is fed and checked (:class:`Calibration`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError, in_one_line

#: calibration images used at most (spread evenly over the folder): min/max ranges settle long before this
MAX_CALIBRATION_IMAGES = 256
#: every HOLD_OUT_EVERY-th image of a calibration folder is held out for the check when no --check folder is given
HOLD_OUT_EVERY = 5
#: intermediate outputs the calibrator keeps before folding them into ranges (bounds its memory)
CALIBRATION_CHUNK = 16
#: detections at or above this score are compared by the box check (torchvision's R-CNN keep 0.05 and up)
BOX_SCORE = 0.5
BOX_IOU = 0.5
#: a classifier's answer is clear when fp32's two best probabilities are at least this far apart: near-ties change
#: with any rounding (on EfficientNet-Lite0's photo crops, one grey level of noise on the input changed 14 % of them)
CLEAR_MARGIN = 0.05


class QuantizeError(CnnappsError):
    """A model or folder that cannot give a smaller graph as asked."""


@dataclass
class Calibration:
    """How ``cnnapps export --int8`` feeds a task's graph and checks it.

    ``feed``: one decoded RGB uint8 image (H, W, 3) -> the graph's inputs (a batch of one for batch graphs);
    ``check``: ``top1`` (classifier logits), ``labels`` (a multi-label classifier's logits, a class a label when
    its sigmoid reaches its entry of ``thresholds``), ``cosine`` (embeddings) or ``boxes`` (detector boxes, labels,
    scores);
    ``op_types``: the ops to quantize (None: every op onnxruntime quantizes); ``half_modules``: for fp16, the
    submodules made fp16 in PyTorch before export (:func:`with_half_layers`; None: onnxruntime's float16 converter
    on the whole graph); ``fp32``: what stays fp32, in words; ``varying_shapes``: the graph's tensors change shape
    from image to image (a detector takes any image size and runs its heads once per detection), so its images
    are calibrated one at a time (onnxruntime stacks the values it collects from several images into one array)."""

    feed: Callable[[np.ndarray], dict[str, np.ndarray]]
    check: str
    op_types: tuple[str, ...] | None = None
    half_modules: tuple[str, ...] | None = None
    fp32: str = ""
    varying_shapes: bool = False
    thresholds: tuple[float, ...] | None = None


def preprocessed_batch(preprocess: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The feed of a batch graph (``images``: N, C, H, W): an image through the model's own preprocessing."""
    return lambda rgb: {"images": preprocess(rgb)[None]}


def unit_image(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The feed of a detection graph (``image``: 3, H, W in [0, 1]; the graph resizes and normalises it)."""
    return {"image": rgb.transpose(2, 0, 1).astype(np.float32) / 255.0}


def readable_images(folder: str | os.PathLike, option: str) -> list[str]:
    """The images under ``folder`` that decode, sorted; a folder that is missing or holds none is a one-line error
    (checked before anything is written)."""
    from cnnapps.datasets.folders import find_images
    from cnnapps.datasets.io import read_image
    from cnnapps.errors import ImageError

    if not os.path.isdir(folder):
        what = "no such folder" if not os.path.exists(folder) else "not a folder"
        raise QuantizeError(f"{option} {folder}: {what}")
    found = find_images(folder)
    readable = []
    for path in found:
        try:
            read_image(path)
        except ImageError:
            continue
        readable.append(path)
    if not readable:
        tried = f" ({len(found)} image files, none could be read)" if found else ""
        raise QuantizeError(f"{option} {folder}: no readable images (JPEG, PNG, WebP, BMP, TIFF or GIF){tried}")
    return readable


def split_held_out(images: list[str], check: list[str] | None) -> tuple[list[str], list[str], bool]:
    """(calibration images, check images, whether the check images are held out from calibration). Without a
    check folder every ``HOLD_OUT_EVERY``-th image is held out (at least one when there are two or more); a
    single image calibrates and checks."""
    if check is not None:  # the same files however they are spelled (cal/a.jpg, /abs/cal/a.jpg)
        return images, check, not {os.path.realpath(p) for p in images} & {os.path.realpath(p) for p in check}
    if len(images) < 2:
        return images, images, False
    held = [p for i, p in enumerate(images) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1] or [images[-1]]
    return [p for p in images if p not in held], held, True


def _spread(items: list[str], most: int) -> list[str]:
    if len(items) <= most:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, most)]


def _inputs(images: Sequence[str], feed: Callable[[np.ndarray], dict[str, np.ndarray]]) -> Iterator[dict]:
    from cnnapps.datasets.io import read_image
    from cnnapps.errors import ImageError

    for path in images:
        try:
            rgb = read_image(path)
        except ImageError:  # it read when the folder was checked; a file changed since is skipped
            continue
        yield {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed(rgb).items()}


def quantize_int8(data: bytes, calibration: Calibration, images: list[str]) -> bytes:
    """``data`` (an fp32 ONNX graph) with int8 weights (per channel, 7 bits) and uint8 activations (per tensor),
    QDQ, the activation ranges calibrated on ``images``; fully connected layers (Gemm, MatMul: a classifier, an
    embedding's projection) stay fp32.

    uint8 activations times int8 weights is what onnxruntime's x86 kernels run fast (uint8 weights took 7x
    fp32's time on an AVX2 CPU; int8 ran at 1.5x fp32's speed). The weights use 7 of their 8 bits (onnxruntime's
    ``reduce_range``): without VNNI (AVX2) the kernels add pairs of products in 16 bits, which saturates with full-
    range weights (on EfficientNet-Lite0 that changed the top-1 of 36 % of held-out photos; with 7 bits, 25 %).
    The classifier in fp32 brought that to 19 % for a few % of the speed; the changed answers are near-ties of
    fp32 (where its top two probabilities were more than 0.2 apart, none changed). With 7-bit weights the sums
    cannot saturate, so CPUs with and without VNNI give the same answers. Activation ranges: the 99.999th
    percentile of the calibration values rather than their min and max (one outlier no longer stretches a range):
    the digits model's top-1 agreement with fp32 went from 98.3 % to 99.2 %, EfficientNet-Lite0's stayed 80 %."""
    with _root_logger_kept():
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

    chosen = _spread(images, MAX_CALIBRATION_IMAGES)
    # onnxruntime folds the kept outputs into ranges every `chunk` images and once more at the end, and that last
    # fold fails ("No data is collected") when nothing is left over: a chunk that does not divide the count
    chunk = next((c for c in range(CALIBRATION_CHUNK, 1, -1) if len(chosen) % c), len(chosen) + 1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = _inputs(chosen, calibration.feed)

        def __len__(self) -> int:
            return len(chosen)

        def set_range(self, start_index: int, end_index: int) -> None:  # one stride of CalibStridedMinMax
            self.inputs = _inputs(chosen[start_index:end_index], calibration.feed)

        def get_next(self) -> dict | None:
            return next(self.inputs, None)

    options: dict[str, Any] = {"CalibMaxIntermediateOutputs": chunk}
    if calibration.varying_shapes:
        options["CalibStridedMinMax"] = 1  # each image's values folded into the ranges on their own

    with tempfile.TemporaryDirectory(prefix="cnnapps-int8-") as tmp, _quiet_quantizer():
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(data)
        try:
            quantize_static(
                source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(calibration.op_types) if calibration.op_types else None,
                nodes_to_exclude=_fully_connected(data),
                calibrate_method=CalibrationMethod.Percentile,
                extra_options=options,
            )  # fmt: skip
        except Exception as exc:  # onnxruntime's own errors: one line
            raise QuantizeError(f"--int8: onnxruntime could not quantize this graph ({in_one_line(exc)})") from None
        return _without_unused_constants(target.read_bytes())


def _fully_connected(data: bytes) -> list[str]:
    """The names of the graph's Gemm and MatMul nodes (kept fp32 by :func:`quantize_int8`)."""
    import onnx

    return [n.name for n in onnx.load_from_string(data).graph.node if n.op_type in ("Gemm", "MatMul") and n.name]


def _without_unused_constants(data: bytes) -> bytes:
    """``data`` without the constants no node reads (the quantizer leaves the bounds of the clips it folded into
    the quantization ranges, and onnxruntime would warn about each of them on every load)."""
    import onnx

    model = onnx.load_from_string(data)

    def read(graph: Any) -> Iterator[str]:
        for node in graph.node:
            yield from node.input
            for attribute in node.attribute:
                for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                    yield from read(sub)

    used = set(read(model.graph)) | {o.name for o in model.graph.output}
    nodes = [n for n in model.graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    initializers = [t for t in model.graph.initializer if t.name in used]
    if len(nodes) == len(model.graph.node) and len(initializers) == len(model.graph.initializer):
        return data
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    return model.SerializeToString()


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Imports under it leave the root logger as it was: onnxruntime's quantization package calls
    ``logging.basicConfig`` when imported, which would send every library's INFO records of the embedding program
    to the standard error of that moment (a stream that may be closed later)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer's notes (pre-processing advice; biases of all-but-zero channels clipped to int32) are
    logged on the root logger: kept off the terminal while it runs, other records pass. Its calibration's progress
    lines (printed) do not reach stdout, which may be the command's JSON."""
    import io
    import logging

    marker = os.path.join("onnxruntime", "quantization")

    def keep(record: logging.LogRecord) -> bool:
        return marker not in record.pathname or record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(keep)


def to_fp16(data: bytes) -> bytes:
    """``data`` (an fp32 ONNX graph) with fp16 weights and arithmetic; its inputs and outputs stay fp32. Ops that
    need fp32 (NMS, RoI Align, TopK, index arithmetic) stay fp32 (onnxruntime's block list)."""
    import onnx

    with _root_logger_kept():
        from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True).SerializeToString()


def with_half_layers(model: Any, paths: Sequence[str]) -> Any:
    """A copy of ``model`` whose submodules at ``paths`` (``"rpn.head"``; missing ones skipped) compute in fp16,
    taking and giving fp32: exported, the graph holds their weights in fp16 with casts at their borders, and
    everything else stays as it was.

    For graphs onnxruntime's float16 converter gets wrong: it mistypes the values of subgraphs (the If and Loop
    of R-CNN post-processing) and, for every op it leaves in fp32, rounds the values between two such ops through
    fp16 (box coordinates too)."""
    import copy

    from torch import nn

    class Half(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, *args: Any) -> Any:
            import torch

            return _cast(self.inner(*_cast(args, torch.float16)), torch.float32)

    model = copy.deepcopy(model).eval()
    for path in paths:
        *parents, name = path.split(".")
        owner = model
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, name, None), nn.Module):
            setattr(owner, name, Half(getattr(owner, name)))
    return model


def _cast(value: Any, dtype: Any) -> Any:
    """Every floating-point tensor in ``value`` (a tensor, or lists, tuples and dicts of them) as ``dtype``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _cast(v, dtype)) for k, v in value.items())
    return value


def compare(reference: bytes, smaller: bytes, calibration: Calibration, images: list[str]) -> dict[str, Any]:
    """The two graphs on ``images`` (both on onnxruntime's CPU provider), compared as the task's check says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs on a CPU: onnxruntime notes each cast it adds
    sessions = [ort.InferenceSession(g, options, providers=["CPUExecutionProvider"]) for g in (reference, smaller)]
    pairs = [tuple(s.run(None, inputs) for s in sessions) for inputs in _inputs(images, calibration.feed)]
    if not pairs:
        raise QuantizeError("the check images could not be read")
    if calibration.check == "labels":
        return {"images": len(pairs), **_labels(pairs, calibration.thresholds or ())}
    check = {"top1": _top1, "cosine": _cosine, "boxes": _boxes}[calibration.check]
    return {"images": len(pairs), **check(pairs)}


def _top1(pairs: list[tuple[list, list]]) -> dict[str, Any]:
    def softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ref = np.concatenate([a[0] for a, _ in pairs]).astype(np.float64)
    got = np.concatenate([b[0] for _, b in pairs]).astype(np.float64)
    same = ref.argmax(1) == got.argmax(1)
    probs = softmax(ref)
    diff = float(np.abs(probs - softmax(got)).max())
    top2 = np.sort(probs, axis=1)[:, -2:] if ref.shape[1] > 1 else np.ones((len(ref), 2))
    clear = top2[:, 1] - top2[:, 0] >= CLEAR_MARGIN
    return {"metric": "top1_agreement", "value": round(float(same.mean()), 4), "max_probability_diff": round(diff, 4),
            "clear_images": int(clear.sum()),
            "clear_agreement": round(float(same[clear].mean()), 4) if clear.any() else None}  # fmt: skip


def _labels(pairs: list[tuple[list, list]], thresholds: Sequence[float]) -> dict[str, Any]:
    """A multi-label head's label sets (sigmoid >= the class's threshold) compared, and its largest sigmoid change."""
    ref = np.concatenate([a[0] for a, _ in pairs]).astype(np.float64)
    got = np.concatenate([b[0] for _, b in pairs]).astype(np.float64)
    probs, changed = 1 / (1 + np.exp(-ref)), 1 / (1 + np.exp(-got))
    limits = np.asarray(thresholds, np.float64)
    same = ((probs >= limits) == (changed >= limits)).all(axis=1)
    return {"metric": "label_set_agreement", "value": round(float(same.mean()), 4),
            "max_probability_diff": round(float(np.abs(probs - changed).max()), 4)}  # fmt: skip


def _cosine(pairs: list[tuple[list, list]]) -> dict[str, Any]:
    ref = np.concatenate([a[0] for a, _ in pairs]).astype(np.float64)
    got = np.concatenate([b[0] for _, b in pairs]).astype(np.float64)
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    return {"metric": "cosine", "value": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x0 y0 x1 y1."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _boxes(pairs: list[tuple[list, list]]) -> dict[str, Any]:
    """The smaller graph's boxes scored against fp32's as the reference (score >= ``BOX_SCORE``): a box agrees when
    it has fp32's label and IoU >= ``BOX_IOU`` with an fp32 box not matched yet (greedy, best score first)."""
    matched = reference = found = 0
    ious = []
    for ref, got in pairs:
        (rb, rl, rs), (gb, gl, gs) = ref[:3], got[:3]
        rb, rl = rb[rs >= BOX_SCORE], rl[rs >= BOX_SCORE]
        keep = gs >= BOX_SCORE
        order = np.argsort(-gs[keep], kind="stable")
        gb, gl = gb[keep][order], gl[keep][order]
        reference, found = reference + len(rb), found + len(gb)
        if not len(rb) or not len(gb):
            continue
        overlap = _iou(gb.astype(np.float64), rb.astype(np.float64))
        overlap[gl[:, None] != rl[None, :]] = 0
        taken = np.zeros(len(rb), bool)
        for row in overlap:
            row = np.where(taken, 0, row)
            best = int(row.argmax())
            if row[best] >= BOX_IOU:
                taken[best] = True
                matched += 1
                ious.append(float(row[best]))
    if not reference and not found:  # no box on either side: nothing was compared
        return {"metric": "box_f1", "value": None, "precision": None, "recall": None, "mean_iou": None,
                "fp32_boxes": 0, "score_threshold": BOX_SCORE, "iou_threshold": BOX_IOU}  # fmt: skip
    precision = matched / found if found else 1.0
    recall = matched / reference if reference else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"metric": "box_f1", "value": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
            "mean_iou": round(float(np.mean(ious)), 4) if ious else None, "fp32_boxes": reference,
            "score_threshold": BOX_SCORE, "iou_threshold": BOX_IOU}  # fmt: skip


def describe_check(check: dict[str, Any], precision: str) -> str:
    """One line for the terminal: what the check found."""
    where = f"{check['images']} {'held-out ' if check.get('held_out') else ''}image{'s' * (check['images'] != 1)}"
    metric, value = check["metric"], check["value"]
    if metric == "top1_agreement":
        said = f"top-1 agrees with fp32 on {value:.1%} (largest probability change {check['max_probability_diff']:.3f})"
        if check.get("clear_agreement") is not None and check["clear_images"] < check["images"]:
            said += (f"; on {check['clear_agreement']:.1%} of the {check['clear_images']} whose fp32 top two "
                     f"probabilities are {CLEAR_MARGIN} or more apart")  # fmt: skip
    elif metric == "label_set_agreement":
        said = (f"label sets agree with fp32's on {value:.1%} (largest probability change "
                f"{check['max_probability_diff']:.3f})")  # fmt: skip
    elif metric == "cosine":
        said = f"cosine similarity to fp32 embeddings {value:.4f} on average (lowest {check['min']:.4f})"
    elif value is None:
        said = f"nothing to compare: neither graph found a box with score >= {check['score_threshold']}"
    else:
        said = (f"boxes agree with fp32's: F1 {value:.3f} (precision {check['precision']:.3f}, recall "
                f"{check['recall']:.3f}; {check['fp32_boxes']} fp32 boxes, "
                f"score >= {check['score_threshold']})")  # fmt: skip
    return f"{precision} check on {where}: {said}"
