"""Loading, exporting and decoding from several threads leave the process's warning filters as they were."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch
from PIL import Image

from cnnapps.datasets.io import decode_bytes
from cnnapps.exported import to_onnx
from cnnapps.runtime import prepare_runner


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def _in_threads(work, count: int = 4) -> None:
    start, failed = threading.Barrier(count), []

    def run() -> None:
        start.wait()
        try:
            work()
        except Exception as exc:  # reported below, in the test's thread
            failed.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed, failed


def test_concurrent_loads_and_decodes_keep_the_warning_filters() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8)
    encoded = []
    for fmt, mode in (("GIF", "P"), ("TIFF", "RGB"), ("PNG", "RGB")):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, fmt)
        encoded.append(buf.getvalue())

    net = _net()

    def load_and_decode() -> None:
        for _ in range(3):
            prepare_runner(net, torch.zeros(1, 3, 16, 16), torch.device("cpu"), "jit")
            for data in encoded * 20:
                assert decode_bytes(data, name="in.img").shape == (24, 24, 3)

    before = list(warnings.filters)
    _in_threads(load_and_decode)
    assert warnings.filters == before
    with warnings.catch_warnings(record=True) as got:  # a later warning is still seen
        warnings.warn("after the threads", UserWarning, stacklevel=1)
    assert [str(w.message) for w in got] == ["after the threads"]


def test_concurrent_onnx_exports_all_succeed_and_keep_the_warning_filters() -> None:
    net, example, dynamic = _net(), torch.zeros(1, 3, 16, 16), {"images": {0: "batch"}, "outputs": {0: "batch"}}
    written = []
    before = list(warnings.filters)
    _in_threads(lambda: written.extend(to_onnx(net, example, ["images"], ["outputs"], dynamic) for _ in range(3)))
    assert len(written) == 12 and len(set(written)) == 1
    assert warnings.filters == before
