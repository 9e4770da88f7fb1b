"""Inference engines: a caller's module is never changed, channels_last strides are canonical, torch.compile
answers like eager, and on a GPU every engine runs what it says."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from cnnapps.engines import EngineError, why_unavailable
from cnnapps.errors import CnnappsError
from cnnapps.runtime import ENGINES, prepare_for_inference, prepare_runner, to_channels_last

CPU = torch.device("cpu")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# inductor builds C++ on a CPU: without a compiler torch.compile cannot run here at all
requires_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile needs a C++ compiler on a CPU"
)


def small_net() -> nn.Module:
    """Convolutions of the kinds whose channels_last strides are ambiguous (1x1, depthwise), batch norm, a head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 16, 3, groups=16, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip


class TwoMaps(nn.Module):
    """A trunk's pass: stage maps, as the detection and multi-head predictors run it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_net()[:4]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return y, y.mean((2, 3))


def snapshot(module: nn.Module) -> list[tuple]:
    return [(t.device, t.stride(), t.clone()) for t in [*module.parameters(), *module.buffers()]] + [
        tuple(m.training for m in module.modules())
    ]


def same(a: list[tuple], b: list[tuple]) -> bool:
    *tensors_a, modes_a = a
    *tensors_b, modes_b = b
    return modes_a == modes_b and all(
        da == db and sa == sb and torch.equal(ta, tb)
        for (da, sa, ta), (db, sb, tb) in zip(tensors_a, tensors_b, strict=True)
    )


def test_channels_last_strides_are_canonical() -> None:
    net = to_channels_last(small_net())
    for p in net.parameters():
        if p.dim() == 4:
            _, c, h, w = p.shape
            assert p.stride() == (c * h * w, 1, w * c, c), p.shape  # also for the 1x1 and depthwise kernels
    # a 1x1 kernel's NCHW strides (4, 1, 1, 1) already count as channels_last: restrided, its values kept
    conv = nn.Conv2d(4, 6, 1)
    before = conv.weight.detach().clone()
    assert conv.weight.stride() == (4, 1, 1, 1)
    to_channels_last(conv)
    assert conv.weight.stride() == (4, 1, 4, 4) and torch.equal(conv.weight, before)


@pytest.mark.parametrize("engine", ["eager", "jit", "auto"])
def test_a_callers_module_is_left_as_it_was(engine: str) -> None:
    net = small_net().train()  # in training mode, NCHW: every engine but eager would change that
    before = snapshot(net)
    x = torch.randn(3, 3, 16, 16)
    run = prepare_for_inference(net, torch.zeros(4, 3, 16, 16), CPU, engine)
    with torch.no_grad():
        got = run(x)
    assert same(snapshot(net), before)
    expected = small_net().eval()(x)  # the same weights (same seed), in eval mode
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_an_owned_module_is_placed_in_place() -> None:
    net = small_net().train()
    run = prepare_for_inference(net, torch.zeros(2, 3, 16, 16), CPU, "eager", owned=True)
    assert run is net and not net.training  # no copy of the weights: the module itself, in eval mode


def test_engine_names_are_checked() -> None:
    assert "compile" in ENGINES
    with pytest.raises(CnnappsError, match="--engine fast: choose one of auto, eager, jit, compile, onnxruntime"):
        prepare_for_inference(small_net(), torch.zeros(1, 3, 8, 8), CPU, "fast")


class Untraceable(nn.Module):
    """A module TorchScript cannot trace (its output is a Python list)."""

    def forward(self, x: torch.Tensor) -> list:
        return x.flatten(1).tolist()


def test_the_engine_that_runs_is_named_and_jit_asked_for_by_name_never_runs_eagerly() -> None:
    example = torch.zeros(2, 3, 8, 8)
    for engine, expected in (("eager", "eager"), ("jit", "jit"), ("auto", "jit"), ("onnxruntime", "onnxruntime")):
        run, used = prepare_runner(small_net(), example, CPU, engine)
        assert used == expected, engine
        torch.testing.assert_close(run(example), small_net().eval()(example), rtol=1e-4, atol=1e-5)
    run, used = prepare_runner(Untraceable(), example, CPU, "auto")  # auto: eager, and it says so
    assert used == "eager" and len(run(example)) == 2
    with pytest.raises(EngineError, match=r"--engine jit: TorchScript cannot trace Untraceable .*use --engine auto"):
        prepare_runner(Untraceable(), example, CPU, "jit")


def test_onnx_engines_run_models_with_several_outputs() -> None:
    module = TwoMaps().eval()
    x = torch.randn(3, 3, 8, 8)
    run, used = prepare_runner(module, torch.zeros(3, 3, 8, 8), CPU, "onnxruntime")
    got = run(x)
    assert used == "onnxruntime" and isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, module(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_classification_predictor_leaves_the_callers_model_alone() -> None:
    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.backbones.preprocess import Preprocess

    net = small_net().train()
    before = snapshot(net)
    member = LoadedClassifier("mine", net, list("abcde"), Preprocess(input_size=(3, 16, 16), resize=16))
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    probs = ClassificationPredictor([member], device="cpu").predict_proba([image])[1]
    assert same(snapshot(net), before) and member.model is net
    assert probs.shape == (1, 5) and abs(float(probs.sum()) - 1) < 1e-5


@requires_compiler
def test_compile_engine_answers_like_eager_for_any_batch_size(caplog: pytest.LogCaptureFixture) -> None:
    from cnnapps.backbones import create_backbone

    net = create_backbone("lenet5", weights=None, in_channels=3).eval()
    with caplog.at_level("INFO", logger="cnnapps"):
        run = prepare_for_inference(net, torch.zeros(4, 3, 32, 32), CPU, "compile")
    assert run.compile_seconds > 0
    assert sum("torch.compile: SequentialBackbone compiled in" in r.message for r in caplog.records) == 1
    torch.manual_seed(1)
    with torch.inference_mode():
        for n in (4, 1, 7):  # the compiled size, a padded batch, and one cut in two
            x = torch.randn(n, 3, 32, 32)
            # fp32 on both sides; inductor fuses and reorders sums, so the last bits move
            torch.testing.assert_close(run(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@requires_cuda
def test_on_cuda_jit_is_a_graph_and_the_callers_module_stays_on_the_cpu() -> None:
    cuda = torch.device("cuda")
    net = small_net().eval()
    before = snapshot(net)
    x = torch.randn(4, 3, 16, 16)
    run = prepare_for_inference(net, torch.zeros(4, 3, 16, 16), cuda, "jit")
    assert "graph" in run.__name__  # a frozen TorchScript graph, not the autocast path "auto" takes
    with torch.no_grad():
        got = run(x.to(cuda)).cpu()
        expected = net(x)
    assert same(snapshot(net), before)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=2e-3)  # fp32 with TF32 convolutions


def _bound_graphs() -> list[tuple[bytes, torch.Tensor]]:
    """Graphs for the I/O binding: one output of fixed size past the batch, two outputs, and a map whose height and
    width only the run knows (onnxruntime allocates that one)."""
    from cnnapps.exported import onnx_bytes, to_onnx

    any_size = {"images": {0: "batch", 2: "h", 3: "w"}, "outputs": {0: "batch", 2: "h", 3: "w"}}
    maps = to_onnx(small_net()[:4].eval(), torch.zeros(1, 3, 8, 8), ["images"], ["outputs"], any_size)
    return [
        (onnx_bytes(small_net().eval(), (3, 8, 8)), torch.randn(3, 3, 8, 8)),
        (onnx_bytes(TwoMaps().eval(), (3, 8, 8)), torch.randn(2, 3, 8, 8)),
        (maps, torch.randn(2, 3, 12, 10)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_onnx_io_binding_answers_as_the_plain_run(case: int) -> None:
    from cnnapps.exported import OnnxRunner

    graph, x = _bound_graphs()[case]
    runner = OnnxRunner(graph)
    plain, bound = runner(x), runner.run_bound(x)
    plain = plain if isinstance(plain, tuple) else (plain,)
    bound = bound if isinstance(bound, tuple) else (bound,)
    assert len(plain) == len(bound)
    for a, b in zip(plain, bound, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.skipif(why_unavailable("onnx-cuda") is not None, reason=f"onnx-cuda: {why_unavailable('onnx-cuda')}")
@pytest.mark.parametrize("case", range(3))
def test_onnx_cuda_keeps_a_gpu_batch_on_the_gpu(case: int) -> None:
    from cnnapps.exported import OnnxRunner

    graph, x = _bound_graphs()[case]
    cpu = OnnxRunner(graph)(x)
    runner = OnnxRunner(graph, device="cuda", engine="onnx-cuda")
    got = runner(x.cuda())
    cpu, got = (cpu, got) if isinstance(cpu, tuple) else ((cpu,), (got,))
    for a, b in zip(cpu, got, strict=True):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)
