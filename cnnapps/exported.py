"""Exported graphs: ONNX bytes from a module, the ``cnnapps`` metadata of exported files, and onnxruntime runs.

Base layer: the predictors of every task use these to run files that ``cnnapps export`` wrote. Importing it loads
no torch, so that ``cnnapps export`` can refuse what it cannot write before torch is loaded.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnapps.errors import CnnappsError, in_one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from cnnapps.quantize import Calibration

OPSET = 17


@dataclass
class Exportable:
    """What ``cnnapps export`` writes for one model: the module, its metadata, an example input and the graph's
    input/output names and dynamic axes (an image batch -> one output, unless a task says otherwise)."""

    module: nn.Module
    meta: dict[str, Any]
    example: Any
    inputs: list[str] = field(default_factory=lambda: ["images"])
    outputs: list[str] = field(default_factory=lambda: ["outputs"])
    dynamic: dict[str, dict[int, str]] = field(
        default_factory=lambda: {"images": {0: "batch"}, "outputs": {0: "batch"}}
    )
    calibration: Calibration | None = None  # how `--int8` feeds and checks the graph (tasks that can be quantized)


class ExportError(CnnappsError):
    """A model that cannot be exported as asked, or an exported file that cannot be used."""


# torch's TorchScript-based ONNX exporter keeps its state in module globals: one export at a time in a process
_EXPORTING = threading.Lock()


def to_onnx(model: nn.Module, example: Any, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    """``model`` traced on ``example`` as ONNX bytes (opset 17) with the given input/output names and dynamic axes."""
    import torch

    import cnnapps.runtime  # noqa: F401  (its warning filters quiet the tracer's notes on Python values in the graph)
    from cnnapps.backbones.timm_nets import static_same_padding

    if isinstance(example, torch.Tensor) and set(dynamic.get(inputs[0], {})) <= {0}:  # images of one size
        model = static_same_padding(model, example)
    buffer = io.BytesIO()
    with _EXPORTING, torch.no_grad():
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic)  # fmt: skip
    return buffer.getvalue()


def onnx_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> bytes:
    """An image-batch model (N, 3, H, W) -> (N, ...) as ONNX with a dynamic batch size; a model with several
    outputs (a trunk's stage maps) gives a graph with as many (``outputs0``, ``outputs1``, ...)."""
    import torch

    example = torch.zeros(1, *input_size)
    with torch.no_grad():
        got = model.eval().cpu()(example)
    count = len(got) if isinstance(got, (tuple, list)) else 1
    outputs = ["outputs"] if count == 1 else [f"outputs{i}" for i in range(count)]
    dynamic = {name: {0: "batch"} for name in ["images", *outputs]}
    return to_onnx(model, example, ["images"], outputs, dynamic)


def is_onnx_file(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names an ONNX file: its name ends in ``.onnx`` (any case), or it is a file whose bytes are
    an ONNX protobuf (field 1, ``ir_version``, first) rather than a safetensors file (an 8-byte little-endian
    header length, then its JSON header's ``{``)."""
    name = str(spec)
    if name.lower().endswith(".onnx"):
        return True
    # any other name, .safetensors too, is told by its bytes: an ONNX file so named was read as a safetensors
    # header of 8,031,177,557,570,357,256 bytes
    if not os.path.isfile(name):
        return False
    try:
        with open(name, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[0] == 0x08 and head[8:9] != b"{"


def read_onnx_metadata(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """The ``cnnapps`` metadata of an exported ONNX file (without loading the weights into a session);
    with ``task``, a file exported for another task is refused."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    found = [prop.value for prop in graph.metadata_props if prop.key == "cnnapps"]
    if not found:
        raise ExportError(f"{path}: an ONNX file without cnnapps metadata; export it with `cnnapps export`")
    try:
        meta = json.loads(found[0])
    except (ValueError, RecursionError):  # ValueError: also a number of more digits than Python converts
        raise ExportError(f"{path}: its cnnapps metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: its cnnapps metadata is not a JSON object")
    if task is not None and meta.get("task") != task:
        raise ExportError(f"{path}: exported as a {meta.get('task')} model, not a {task} model")
    return meta


def check_graph_input(runner: Any, input_size: Any, path: str | os.PathLike) -> None:
    """A one-line error when the fixed sizes of ``runner``'s graph input (past the batch) differ from the
    metadata's ``preprocess.input_size`` (C, H, W): the file's metadata was written for another graph."""
    shape = runner.session.get_inputs()[0].shape[1:]
    size = list(input_size)
    if len(shape) != len(size) or any(isinstance(d, int) and d != s for d, s in zip(shape, size, strict=False)):
        takes = "x".join(str(d) if isinstance(d, int) else "?" for d in shape)
        raise ExportError(f"{path}: preprocess.input_size {size} in its cnnapps metadata, but its graph takes {takes}")


def _numpy_batch(images: torch.Tensor) -> Any:
    import numpy as np

    return np.ascontiguousarray(images.detach().float().cpu().numpy())


def _as_tensors(arrays: list[Any], device: torch.device) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A graph's outputs as tensors on ``device``: one tensor, or a tuple when the graph has several outputs."""
    import torch

    tensors = tuple(torch.from_numpy(a).to(device) for a in arrays)
    return tensors[0] if len(tensors) == 1 else tensors


class OnnxRunner:
    """``runner(images)`` -> torch tensor (a tuple for a graph with several outputs): an ONNX image-batch graph in
    onnxruntime. ``engine``: ``onnxruntime`` (the CPU provider; on a CUDA device the CUDA provider), ``onnx-cuda``
    (the CUDA provider) or ``tensorrt`` (the TensorRT provider; nodes it does not take run on CUDA).

    A provider that is missing, or that onnxruntime could not start (it would quietly go on with the next one), is
    an error, not a quiet run on the CPU. ``engine`` after loading: the engine that runs (``onnx-cuda`` when
    ``onnxruntime`` runs on the CUDA provider).

    On the CPU it runs on as many threads as PyTorch does (``torch.set_num_threads``, ``OMP_NUM_THREADS``). Its
    threads sleep between runs instead of spinning (``session.intra_op.allow_spinning`` 0): a caller
    decodes, resizes and post-processes between two runs, and spinning threads took the cores from it (the digits
    model, end to end from files on 2 cores: 226 images/s spinning, 394-433 not; benchmarks/engines.py)."""

    def __init__(self, model: bytes | str | os.PathLike, device: torch.device | str = "cpu",
                 engine: str = "onnxruntime") -> None:  # fmt: skip
        import onnxruntime as ort
        import torch

        from cnnapps.engines import PROVIDERS, EngineError, require

        cuda = torch.device(device).type == "cuda"
        if engine == "onnxruntime" and cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    "--engine onnxruntime on cuda: the installed onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu, or use --device cpu)"
                )
            engine = "onnx-cuda"
        elif engine in PROVIDERS:
            require(engine)
            if not cuda:
                raise EngineError(f"--engine {engine} runs on a CUDA GPU, not on {device} (use --device cuda or auto)")
        elif engine != "onnxruntime":
            raise EngineError(f"--engine {engine}: not an onnxruntime engine (onnxruntime, onnx-cuda, tensorrt)")
        providers = {"onnxruntime": ["CPUExecutionProvider"], "onnx-cuda": ["CUDAExecutionProvider"],
                     "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}[engine]  # fmt: skip
        if cuda:
            index = torch.device(device).index or 0
            providers = [(p, {"device_id": index}) for p in providers]
        self.source = model
        self.device = torch.device(device)
        self.engine = engine
        chain = providers if engine == "onnxruntime" else [*providers, "CPUExecutionProvider"]  # CPU: nodes they lack
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not cuda:  # torch's thread count, as OpenVINO's and PyTorch's engines take (onnxruntime took every core)
            options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), sess_options=options, providers=chain
        )
        self.providers = self.session.get_providers()
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.providers[0] != wanted:  # onnxruntime could not start it and went on with the CPU
            raise EngineError(
                f"--engine {engine}: onnxruntime could not start its {wanted} here (its libraries are missing or do "
                "not match this onnxruntime); see onnxruntime's log above"
            )
        first = self.session.get_inputs()[0]
        self.input = first.name
        self._input_type = _bound_type(first.type)
        self._output_types = [(o.name, _bound_type(o.type)) for o in self.session.get_outputs()]
        self.outputs = [o.shape for o in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if images.device.type == "cuda" and self.device.type == "cuda" and self._input_type is not None:
            return self.run_bound(images)
        return _as_tensors(self.session.run(None, {self.input: _numpy_batch(images)}), images.device)

    def run_bound(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The graph on ``images`` where they are, through onnxruntime's I/O binding: a batch on the GPU stays there
        (the plain run copies it to the host and back: 154 MB each way for 256 images of 224 px), and outputs whose
        sizes past the batch are fixed are written straight into tensors on the batch's device; others are copied."""
        import torch

        device = images.device
        kind, index = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)
        dtype, element = self._input_type
        batch = images.detach().to(dtype).contiguous()
        binding = self.session.io_binding()
        binding.bind_input(self.input, kind, index, element, tuple(batch.shape), batch.data_ptr())
        made: list[torch.Tensor | None] = []
        for (name, bound), shape in zip(self._output_types, self.outputs, strict=True):
            if bound is not None and all(isinstance(d, int) for d in shape[1:]):
                out = torch.empty((batch.shape[0], *shape[1:]), dtype=bound[0], device=device)
                binding.bind_output(name, kind, index, bound[1], tuple(out.shape), out.data_ptr())
                made.append(out)
            else:  # a size that only the run knows: onnxruntime allocates it
                binding.bind_output(name, kind, index)
                made.append(None)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # onnxruntime reads the batch on a stream of its own
        self.session.run_with_iobinding(binding)
        hosts = binding.copy_outputs_to_cpu() if None in made else [None] * len(made)
        tensors = tuple(
            out if out is not None else torch.from_numpy(host).to(device) for out, host in zip(made, hosts, strict=True)
        )
        return tensors[0] if len(tensors) == 1 else tensors


def _bound_type(onnx_type: str) -> tuple[Any, Any] | None:
    """The (torch dtype, numpy type) of an onnxruntime input/output type (``tensor(float)``) that I/O binding takes
    here; None for others."""
    import numpy as np
    import torch

    types = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16),
             "tensor(int64)": (torch.int64, np.int64), "tensor(uint8)": (torch.uint8, np.uint8)}  # fmt: skip
    return types.get(onnx_type)


class OpenVinoRunner:
    """``runner(images)`` -> torch tensor (a tuple for several outputs): an ONNX image-batch graph compiled by
    OpenVINO for the CPU, in fp32 (OpenVINO would otherwise pick bf16 on CPUs that have it).

    A graph whose only dynamic size is the batch is compiled for each batch size it is called with (the first,
    ``batch_size``, at once; up to :attr:`STATIC_SHAPES` sizes, later ones run on the graph compiled with its
    dynamic batch): OpenVINO runs a static shape faster (2 cores, against the dynamic graph: EfficientNet-Lite0 at
    224 px 1.3x at batch 1 and 1.07x at batch 4, at 64 px 1.23x and 1.06x). Other graphs (a dynamic image size)
    are compiled once.

    ``hint``: ``latency`` (one request uses every core: what single images and, on the measured 2-core CPU,
    batches want) or ``throughput`` (several streams; a batch is split over the requests OpenVINO finds best and
    they run at once). ``threads``: cores to use (default: torch's thread count, so ``OMP_NUM_THREADS`` and the
    process's CPU affinity hold here as for the PyTorch engines)."""

    engine = "openvino"
    #: batch sizes compiled as static shapes, at most (a caller's batch and its remainders)
    STATIC_SHAPES = 4

    def __init__(self, model: bytes | str | os.PathLike, hint: str = "latency", threads: int | None = None,
                 batch_size: int = 1) -> None:  # fmt: skip
        import threading

        from cnnapps.engines import require

        require("openvino")
        import openvino as ov
        import torch

        if hint not in ("latency", "throughput"):
            raise ValueError(f"hint: latency or throughput, not {hint!r}")
        self.source, self.hint = model, hint
        self.device = torch.device("cpu")
        self.core = ov.Core()
        self.config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32",
                       "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}  # fmt: skip
        self.graph = self._guarded(
            lambda: self.core.read_model(model, b"") if isinstance(model, bytes) else self.core.read_model(str(model))
        )
        shape = self.graph.inputs[0].get_partial_shape()
        self._static = (
            len(self.graph.inputs) == 1
            and shape.rank.is_static
            and all(shape[i].is_static for i in range(1, shape.rank.get_length()))
        )
        self._compiled: dict[int | None, Any] = {}  # batch size (None: the dynamic graph) -> compiled model
        self.compiled = self._compile(max(int(batch_size), 1) if self._static else None)
        self.requests = (
            int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if hint == "throughput" else 1
        )
        self.outputs = [tuple(o.get_partial_shape()) for o in self.graph.outputs]
        self._lock = threading.Lock()
        self._local = threading.local()  # infer requests per calling thread (video lanes run at once)

    @staticmethod
    def _guarded(make: Any) -> Any:
        from cnnapps.engines import EngineError

        try:
            return make()
        except Exception as exc:
            raise EngineError(f"--engine openvino: OpenVINO could not compile the graph ({in_one_line(exc)})") from None

    def _compile(self, batch: int | None) -> Any:
        """The graph compiled for ``batch`` images a call (None: its dynamic batch), compiled once."""
        compiled = self._compiled.get(batch)
        if compiled is None:
            graph = self.graph
            if batch is not None:
                graph = self.graph.clone()
                shape = self.graph.inputs[0].get_partial_shape()
                graph.reshape([batch, *(shape[i].get_length() for i in range(1, shape.rank.get_length()))])
            compiled = self._compiled[batch] = self._guarded(lambda: self.core.compile_model(graph, "CPU", self.config))
        return compiled

    def _for_batch(self, batch: int) -> Any:
        if not self._static:
            return self._compile(None)
        with self._lock:  # lanes of one video may ask for a new size at once
            if batch in self._compiled or len(self._compiled) < self.STATIC_SHAPES:
                return self._compile(batch)
            return self._compile(None)  # the sizes kept are taken: the dynamic graph for the rest

    def _per_thread(self, kind: str, compiled: Any, make: Any) -> Any:
        """The calling thread's ``kind`` (infer request or queue) of ``compiled``, made by ``make()`` once."""
        made = vars(self._local).setdefault(kind, {})
        if id(compiled) not in made:
            made[id(compiled)] = make()
        return made[id(compiled)]

    def _run_batch(self, array: Any) -> list[Any]:
        import numpy as np

        count = len(self.graph.outputs)
        if self.requests <= 1 or len(array) < 2:
            compiled = self._for_batch(len(array))
            request = self._per_thread("request", compiled, compiled.create_infer_request)
            request.infer({0: array})
            return [np.array(request.get_output_tensor(i).data) for i in range(count)]
        import openvino as ov

        chunks = np.array_split(array, min(self.requests, len(array)))
        done: dict[int, list[Any]] = {}

        def collect(request: Any, index: int) -> None:
            done[index] = [np.array(request.get_output_tensor(i).data) for i in range(count)]

        for size in sorted({len(c) for c in chunks}):  # chunks differ by one image at most: two shapes
            compiled = self._for_batch(size)
            queue = self._per_thread("queue", compiled, functools.partial(ov.AsyncInferQueue, compiled, self.requests))
            queue.set_callback(collect)
            for index, chunk in enumerate(chunks):
                if len(chunk) == size:
                    queue.start_async({0: np.ascontiguousarray(chunk)}, index)
            queue.wait_all()
        return [np.concatenate([done[i][k] for i in range(len(chunks))]) for k in range(count)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return _as_tensors(self._run_batch(_numpy_batch(images)), images.device)


def graph_runner(model: bytes | str | os.PathLike, engine: str, device: torch.device | str = "cpu",
                 batch_size: int = 1) -> OnnxRunner | OpenVinoRunner:  # fmt: skip
    """An ONNX image-batch graph ready to run on ``engine`` (one of the graph engines): OpenVINO with the latency
    hint, compiled for ``batch_size``; onnxruntime with the engine's provider."""
    import torch

    from cnnapps.engines import EngineError

    if engine == "openvino":
        if torch.device(device).type != "cpu":
            raise EngineError(f"--engine openvino runs on the CPU, not on {device} (use --device cpu or auto)")
        return OpenVinoRunner(model, "latency", batch_size=batch_size)
    return OnnxRunner(model, device, engine)
