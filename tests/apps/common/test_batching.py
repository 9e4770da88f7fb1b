"""Batches for inference: preprocessing where the model runs (uint8 over, resize and normalise there) gives the
inputs the CPU path gives, and bad inputs keep their place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnapps.apps.common.batching import BatchRunner, default_decode_workers, preprocess_on_device
from cnnapps.backbones.preprocess import Preprocess

SPECS = [
    Preprocess(input_size=(3, 64, 64), resize=73),
    Preprocess(input_size=(1, 32, 32), resize=32, resize_mode="squash", mean=(0.5,), std=(0.5,)),
]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    from skimage import data

    chelsea, coffee = data.chelsea(), data.coffee()
    # two of one size (resized together), three others, one grey
    return [chelsea, coffee, np.ascontiguousarray(chelsea[::2, ::3]), chelsea.copy(), np.stack([data.camera()] * 3, -1)]


def batches_seen(runner: BatchRunner, inputs: list) -> tuple[list[dict], list]:
    seen: list[dict] = []

    def forward(batch: dict) -> np.ndarray:
        seen.append({spec: tensor.clone() for spec, tensor in batch.items()})
        return np.stack([tensor.flatten(1).sum(1).cpu().numpy() for tensor in batch.values()], 1)

    names, outputs, errors = runner.run(inputs, forward, len(SPECS))
    return seen, [names, outputs, errors]


def test_preprocessing_on_the_device_gives_the_cpu_paths_tensors(images: list[np.ndarray]) -> None:
    """Run here on the CPU as "the device": the same torchvision functions on the same uint8 pixels, images of one
    size in one call, so the tensors must be equal bit for bit (on a GPU the resize kernels differ: see the cuda
    test)."""
    inputs = [*images[:2], b"not an image", *images[2:]]
    cpu, cpu_results = batches_seen(BatchRunner(SPECS, torch.device("cpu"), 3, workers=0), inputs)
    dev, dev_results = batches_seen(
        BatchRunner(SPECS, torch.device("cpu"), 3, workers=2, preprocess_on="device"), inputs
    )
    assert len(cpu) == len(dev) == 2
    for a, b in zip(cpu, dev, strict=True):
        for spec in SPECS:
            assert b[spec].dtype == torch.float32 and b[spec].shape[1:] == spec.input_size
            assert torch.equal(a[spec], b[spec])
    names, outputs, errors = dev_results
    assert names[2] == "<bytes>"
    assert errors[2] is not None and "not an image" in errors[2] and np.isnan(outputs[2]).all()
    np.testing.assert_array_equal(outputs, cpu_results[1])


def test_one_call_per_image_size(images: list[np.ndarray]) -> None:
    single = preprocess_on_device(images[:1], SPECS, torch.device("cpu"))
    mixed = preprocess_on_device(images, SPECS, torch.device("cpu"))
    for spec in SPECS:
        assert torch.equal(mixed[spec][0], single[spec][0]) and torch.equal(mixed[spec][3], single[spec][0])
        assert torch.equal(mixed[spec][1], torch.from_numpy(spec(images[1])))


def test_decode_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnapps.apps.common.batching as batching

    monkeypatch.setattr(batching, "available_cores", lambda: 16)
    assert default_decode_workers(torch.device("cuda")) == 15  # the GPU preprocesses; the CPU only decodes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert default_decode_workers(torch.device("cpu")) == 0  # the forward pass has every core
    assert BatchRunner(SPECS, torch.device("cpu"), 4).on_device is False
    with pytest.raises(ValueError, match="preprocess_on"):
        BatchRunner(SPECS, torch.device("cpu"), 4, preprocess_on="gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_inputs_are_within_a_grey_level_of_the_cpu_paths(images: list[np.ndarray]) -> None:
    """torchvision resizes uint8 on a GPU in float and rounds once; on a CPU its uint8 kernels round a little
    differently: a pixel may move by one grey level, 1/255 before normalisation (0.018 after, with std 0.229)."""
    cpu, _ = batches_seen(BatchRunner(SPECS, torch.device("cpu"), 8, workers=0), images)
    gpu, _ = batches_seen(BatchRunner(SPECS, torch.device("cuda"), 8), images)
    for spec in SPECS:
        difference = (gpu[0][spec].cpu() - cpu[0][spec]).abs()
        assert float(difference.max()) <= 1.01 / 255 / min(spec.std)
        assert float(difference.mean()) < 0.2 / 255 / min(spec.std)
