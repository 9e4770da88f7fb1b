"""Where and how models run: device choice, channels_last, fused inference graphs, torch.compile, autocast, and the
ONNX engines (onnxruntime on CPU, CUDA or TensorRT; OpenVINO). A requested engine runs, or is a one-line error."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import numbers
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnapps.backbones.timm_nets import static_same_padding
from cnnapps.engines import CPU_ENGINES, GPU_ENGINES, GRAPH_ENGINES, EngineError, check_name, require
from cnnapps.engines import ENGINES as ENGINES  # the engine names, where they always were
from cnnapps.errors import CnnappsError, in_one_line

log = logging.getLogger("cnnapps")

# torch's notes while tracing and exporting the models cnnapps runs (TorchScript's deprecation notices, the tracer's
# notes on Python values in a graph), ignored once for the process: a catch_warnings block in each load would swap
# the process's one filter list under other threads (it is not thread-safe) and could leave "ignore every warning"
# in place for good.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(cnnapps|timm|torchvision|torch)\b")
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based", category=DeprecationWarning)
# exporting torchvision's detectors: its post-processing makes tensors of traced sizes with torch.tensor(), and
# torch.onnx notes the slices it cannot fold and the label indexing of the mask and keypoint heads (never negative)
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                        module=r"(torchvision|torch\.nn\.functional)\b")  # fmt: skip
warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning,
                        module=r"torch\.onnx\b")  # fmt: skip
warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing", category=UserWarning,
                        module=r"torch\.onnx\b")  # fmt: skip


def select_device(
    device: str | torch.device | None = "auto", engine: str = "auto", graph: bool = False
) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without one is a clear error.

    ``engine`` narrows ``auto``: GPU engines (onnx-cuda, tensorrt) need CUDA, openvino runs on the CPU, and an ONNX
    graph in onnxruntime (``engine="onnxruntime"``, or ``graph``: the model already is an exported graph and
    ``engine`` is auto) goes to CUDA only where the installed onnxruntime has its CUDA provider. A device that
    contradicts the engine is an error."""
    check_name(engine)
    onnx_auto = engine == "onnxruntime" or (graph and engine == "auto")
    if device is None or str(device) == "auto":
        if engine in GPU_ENGINES:
            require(engine)
            return torch.device("cuda")
        if engine in CPU_ENGINES:
            return torch.device("cpu")
        if onnx_auto and torch.cuda.is_available():
            from cnnapps.engines import ort_providers

            return torch.device("cuda" if "CUDAExecutionProvider" in ort_providers() else "cpu")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise CnnappsError(f"--device {device}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type not in ("cpu", "cuda"):
        raise CnnappsError(f"--device {device}: cnnapps runs on cpu or cuda (use auto, cpu, cuda or cuda:N)")
    if engine in GPU_ENGINES and chosen.type != "cuda":
        raise EngineError(f"--engine {engine} runs on a CUDA GPU, not on --device {device} (use --device cuda or auto)")
    if engine in CPU_ENGINES and chosen.type != "cpu":
        raise EngineError(f"--engine {engine} runs on the CPU, not on --device {device} (use --device cpu or auto)")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CnnappsError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return chosen


#: the largest example (batch x channels x height x width) the graph is warmed on whole: 4 images of 3 x 512 x 512
_WARM_ELEMENTS = 4 * 3 * 512 * 512


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` as an int (None: the predictor's default), or a one-line error for anything but a whole
    number of at least 1."""
    return None if batch_size is None else check_count("batch_size", batch_size, "images per forward pass")


def check_count(name: str, value: Any, what: str) -> int:
    """``value`` of the option ``name`` as an int, or a one-line error saying ``what`` it counts for anything but a
    whole number of at least 1."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise CnnappsError(f"{name}={value!r}: {what}, a whole number of at least 1")
    return int(value)


def example_batch(input_size: tuple[int, ...], batch_size: int) -> torch.Tensor:
    """A batch of ``batch_size`` images of ``input_size`` without its memory (one image, expanded): the example a
    runner is prepared on (:func:`prepare_runner` traces a graph on one image; a compiled model runs batches)."""
    return torch.zeros(1, *input_size).expand(batch_size, *input_size)


@contextlib.contextmanager
def memory_for_input(name: str, input_size: tuple[int, ...], device: torch.device) -> Any:
    """Running out of memory inside the block (preparing a model) is a one-line error naming ``name``."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        raise CnnappsError(f"{name}: not enough memory for its input size {tuple(input_size)} on {device}") from None


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation (PyTorch's on the CPU or a GPU, or Python's)."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a scheduler such as SLURM sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    _, c, h, w = shape
    return (c * h * w, 1, w * c, c)


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` in channels_last, in place: every 4-D parameter and buffer with the canonical NHWC strides.

    ``module.to(memory_format=torch.channels_last)`` leaves a tensor alone when its layout already counts as
    channels_last, which for dimensions of size 1 (1x1 convolutions, depthwise kernels) can keep NCHW strides;
    gradients then come back with NHWC strides and DDP, which compares strides, warns "grad strides do not
    match bucket view strides" and copies every such gradient on every step."""
    module.to(memory_format=torch.channels_last)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.dim() == 4 and tensor.stride() != (strides := _channels_last_strides(tensor.shape)):
            tensor.data = torch.empty_strided(tensor.shape, strides, dtype=tensor.dtype, device=tensor.device).copy_(
                tensor.data
            )
    return module


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def placed_for_inference(model: nn.Module, device: torch.device, channels_last: bool, owned: bool) -> nn.Module:
    """``model`` in eval mode on ``device`` (in channels_last when asked).

    A module that is ``owned`` (loaded from a file by the caller of this function) is changed in place, so no
    second copy of its weights is kept; anyone else's module is never changed: when it would have to move,
    change layout or leave training mode, a copy is placed instead."""
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    unchanged = (
        not any(m.training for m in model.modules())
        and all(_on(t, device) for t in tensors)
        and not (channels_last and any(t.dim() == 4 and t.stride() != _channels_last_strides(t.shape) for t in tensors))
    )
    if unchanged:
        return model
    if not owned:
        model = copy.deepcopy(model)
    model = model.eval().to(device)
    return to_channels_last(model) if channels_last else model


def prepare_for_inference(
    model: nn.Module, example: torch.Tensor, device: torch.device, engine: str = "auto", *, owned: bool = False
) -> Callable[[torch.Tensor], Any]:
    """Return a function computing ``model(x)`` as fast as this device allows, with fp32 accuracy on CPU
    (:func:`prepare_runner` without the name of the engine that runs)."""
    return prepare_runner(model, example, device, engine, owned=owned)[0]


def prepare_runner(
    model: nn.Module | Any, example: torch.Tensor, device: torch.device, engine: str = "auto", *, owned: bool = False
) -> tuple[Callable[[torch.Tensor], Any], str]:
    """A function computing ``model(x)`` as fast as this device allows, with fp32 accuracy on CPU, and the name of
    the engine that runs it (``auto`` resolved: ``jit``, ``eager`` or ``fp16-autocast``).

    - ``auto``: on CPU ``jit`` (a model TorchScript cannot trace runs eagerly); on CUDA channels_last with fp16
      autocast.
    - ``jit``: channels_last plus a frozen TorchScript graph (fp32), which folds batch norm into convolutions
      (and on CPU fuses conv+activation in oneDNN: several times eager speed on small nets). A model TorchScript
      cannot trace is an error.
    - ``compile``: channels_last and ``torch.compile`` (on CUDA under fp16 autocast); compiled here, once, for
      the example's batch shape (smaller batches are padded to it, larger ones cut into it, so nothing
      compiles again), and the time it took is logged.
    - ``eager``: the module as it is (fp32).
    - ``onnxruntime``, ``onnx-cuda``, ``tensorrt``, ``openvino``: the model exported to ONNX in memory (a model
      that already is an exported graph as it is) and run by that engine (see :mod:`cnnapps.engines`). An
      exported graph runs on these only (``auto``: onnxruntime on the predictor's device).

    An engine that cannot run here, or cannot run this model, is an :class:`EngineError`, never a run on another
    engine. ``model`` is left untouched unless ``owned`` (see :func:`placed_for_inference`).
    """
    check_name(engine)
    if not isinstance(model, nn.Module):  # an exported graph (cnnapps.exported.OnnxRunner)
        return _graph_as_asked(model, example, device, engine)
    if engine in GRAPH_ENGINES:  # export to ONNX in memory and run that graph
        from cnnapps.exported import graph_runner, onnx_bytes

        require(engine)
        source = placed_for_inference(model, torch.device("cpu"), channels_last=False, owned=owned)
        runner = graph_runner(onnx_bytes(source, tuple(example.shape[1:])), engine, device, int(example.shape[0]))
        return runner, runner.engine
    if engine == "compile":
        require(engine)
    model = placed_for_inference(model, device, channels_last=engine != "eager", owned=owned)
    if engine == "eager":
        return model, "eager"
    amp = device.type == "cuda" and engine == "auto"  # the module as it is, under autocast: any input size
    if not amp:  # a graph for the example's input size (its TensorFlow padding made static)
        model = static_same_padding(model, example.to(device))
    if engine == "compile":
        return CompiledRunner(model, example.to(device), device), "compile"
    if amp:

        def run_amp(x: torch.Tensor) -> Any:
            with torch.autocast("cuda", dtype=torch.float16):
                return _as_float(model(x.contiguous(memory_format=torch.channels_last)))

        return run_amp, "fp16-autocast"
    # one image traces the graph, which runs any batch size; the first calls specialise it to the shape they see, so
    # it is warmed on the whole batch where that is small, else on the one image (a large input size's batch would
    # cost its activations' memory at load)
    warm = example if example.numel() <= _WARM_ELEMENTS else example[:1]
    warm = warm.to(device).contiguous(memory_format=torch.channels_last)
    example = warm[:1]
    try:
        with torch.no_grad():
            # check_trace traces a second time and compares: for a model in eval mode that only finds randomness
            # (none here), and it more than doubled the load (Lite0: 2.4 s against 0.7 s on 2 cores)
            graph = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            if device.type == "cpu":
                graph = torch.jit.optimize_for_inference(graph)
            for _ in range(2):  # the first calls specialise the graph; do it before real inputs
                graph(warm)
    except Exception as exc:
        if out_of_memory(exc):  # not a model TorchScript cannot trace: running it eagerly needs the memory too
            raise
        if engine == "jit":  # asked for by name: an error, not a quiet eager run
            raise EngineError(f"--engine jit: TorchScript cannot trace {type(model).__name__} ({in_one_line(exc)}); "
                              "use --engine auto or eager") from None  # fmt: skip
        return (lambda x: model(x.contiguous(memory_format=torch.channels_last))), "eager"  # auto: eager it is

    def run_graph(x: torch.Tensor) -> torch.Tensor:
        return graph(x.contiguous(memory_format=torch.channels_last))

    return run_graph, "jit"


def _graph_as_asked(runner: Any, example: torch.Tensor, device: torch.device, engine: str) -> tuple[Any, str]:
    """An exported graph's runner on ``engine``: as it is when it already runs there, else the same graph on that
    engine; a PyTorch engine is an error (there is no module to run)."""
    from cnnapps.exported import graph_runner

    if engine not in ("auto", *GRAPH_ENGINES):
        raise EngineError(f"--engine {engine}: an exported ONNX graph runs on {', '.join(GRAPH_ENGINES)} (or auto), "
                          f"not on a PyTorch engine")  # fmt: skip
    asked = "onnxruntime" if engine == "auto" else engine
    same_device = torch.device(getattr(runner, "device", "cpu")).type == device.type
    if same_device and (runner.engine == asked or (asked == "onnxruntime" and runner.engine == "onnx-cuda")):
        return runner, runner.engine
    require(asked)
    moved = graph_runner(runner.source, asked, device, int(example.shape[0]))
    return moved, moved.engine


def _as_float(out: Any) -> Any:
    """A half-precision output (or each of several) as float32."""
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


class CompiledRunner:
    """A ``torch.compile``d model called on one fixed batch shape: smaller batches are padded, larger ones cut,
    so the graph compiled at load is the only one. ``compile_seconds``: how long compiling took."""

    def __init__(self, model: nn.Module, example: torch.Tensor, device: torch.device) -> None:
        self.model, self.device = model, device
        self.compiled = torch.compile(model, dynamic=False)
        self.size = int(example.shape[0])
        started = time.perf_counter()
        try:
            with torch.inference_mode():  # the mode predictors run in: the guards then match every later call
                for _ in range(2):
                    self(example)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CnnappsError(
                f"--engine compile: torch.compile could not build {type(model).__name__} here "
                f"({type(exc).__name__}: {first[:200]}); use --engine auto"
            ) from None
        self.compile_seconds = time.perf_counter() - started
        log.info("torch.compile: %s compiled in %.1f s", type(model).__name__, self.compile_seconds)

    def _call(self, x: torch.Tensor) -> Any:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return _as_float(self.compiled(x))
        return self.compiled(x)

    def __call__(self, x: torch.Tensor) -> Any:
        n = int(x.shape[0])
        if n == self.size:
            return self._call(x)
        outputs = []
        for start in range(0, n, self.size):
            chunk = x[start : start + self.size]
            rows = int(chunk.shape[0])
            if rows < self.size:  # zeros for the missing rows: in eval mode each row's output is its own
                chunk = torch.cat([chunk, chunk.new_zeros((self.size - rows, *chunk.shape[1:]))])
            out = self._call(chunk)
            outputs.append(tuple(o[:rows] for o in out) if isinstance(out, tuple) else out[:rows])
        if isinstance(outputs[0], tuple):  # a model with several outputs (a trunk's stage maps)
            return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))
        return torch.cat(outputs)


def one_at_a_time(method: Callable[..., Any]) -> Callable[..., Any]:
    """Calls of a predictor's method from several threads run one after another: the model, its compiled
    graph and its decode threads are shared, and a service's threads must not interleave batches."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.get("_call_lock") or self.__dict__.setdefault("_call_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    return locked
