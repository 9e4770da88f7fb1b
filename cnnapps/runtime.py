"""Where and how models run: device choice, channels_last, fused inference graphs, autocast."""

from __future__ import annotations

import functools
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from cnnapps.errors import CnnappsError

T = TypeVar("T")
R = TypeVar("R")

ENGINES = ("auto", "eager", "jit", "onnxruntime")


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without one is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise CnnappsError(f"--device {device}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type not in ("cpu", "cuda"):
        raise CnnappsError(f"--device {device}: cnnapps runs on cpu or cuda (use auto, cpu, cuda or cuda:N)")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CnnappsError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return chosen


def prepare_for_inference(
    model: nn.Module, example: torch.Tensor, device: torch.device, engine: str = "auto"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function computing ``model(x)`` as fast as this device allows, with fp32 accuracy on CPU.

    CPU, engine ``jit`` (what ``auto`` picks): channels_last plus a frozen TorchScript graph, which
    folds batch norm into convolutions and fuses conv+activation in oneDNN (several times eager
    speed on small nets). If tracing fails the model runs eagerly. CUDA: channels_last and fp16
    autocast. Engine ``eager``: the plain module. Engine ``onnxruntime``: the model exported to ONNX
    (in memory) and run by onnxruntime; a model that already is an exported graph runs as it is.
    """
    if engine not in ENGINES:
        raise CnnappsError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if not isinstance(model, nn.Module):  # an exported graph (cnnapps.export.OnnxRunner): it runs as it is
        return model
    if engine == "onnxruntime":  # export to ONNX in memory and run that graph
        from cnnapps.exported import OnnxRunner, onnx_bytes

        return OnnxRunner(onnx_bytes(model, tuple(example.shape[1:])), device)
    model = model.eval().to(device)
    if engine == "eager":
        return model
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":

        def run_amp(x: torch.Tensor) -> Any:
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(x.contiguous(memory_format=torch.channels_last))
            return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

        return run_amp
    example = example.to(device).contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
            for _ in range(2):  # the first calls specialise the graph to the batch shape; do it before real inputs
                graph(example)
    except Exception:  # a model TorchScript cannot trace still runs, just eagerly
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))

    def run_graph(x: torch.Tensor) -> torch.Tensor:
        return graph(x.contiguous(memory_format=torch.channels_last))

    return run_graph


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> Iterator[R]:
    """``map(fn, items)`` in order on a thread pool, keeping at most ``depth`` results in flight.

    Lets decoding (OpenCV releases the GIL) overlap the forward pass without holding a
    whole folder of decoded images in memory.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnapps-decode") as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        for future in pending:
            yield future.result()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def one_at_a_time(method: Callable[..., Any]) -> Callable[..., Any]:
    """Calls of a predictor's method from several threads run one after another: the model, its compiled
    graph and its decode threads are shared, and a service's threads must not interleave batches."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.get("_call_lock") or self.__dict__.setdefault("_call_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    return locked
