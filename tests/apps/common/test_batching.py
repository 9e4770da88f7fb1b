"""Batches for inference: preprocessing where the model runs (uint8 over, resize and normalise there) gives the
inputs the CPU path gives, and bad inputs keep their place."""

from __future__ import annotations

from pathlib import Path

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


# --- memory: a batch of large images ------------------------------------------------------------------------------


@pytest.fixture
def decoded_alive(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``[most]``: the most decoded images alive at once (every PNG's pixels come from ``io._bgr_to_rgb``)."""
    import weakref

    import cnnapps.datasets.io as io

    decode, live, most = io._bgr_to_rgb, set(), [0]

    def counted(*args: object) -> np.ndarray:
        rgb = decode(*args)
        live.add(id(rgb))
        most[0] = max(most[0], len(live))
        weakref.finalize(rgb, live.discard, id(rgb))
        return rgb

    monkeypatch.setattr(io, "_bgr_to_rgb", counted)
    return most


def pngs(tmp_path: Path, side: int, count: int = 6) -> list[str]:
    import cv2

    rng = np.random.default_rng(side)
    paths = []
    for i in range(count):
        paths.append(str(tmp_path / f"{side}-{i}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 255, (side, side, 3), np.uint8))
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_of_large_images_is_cut_by_their_pixels_before_it_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_alive: list[int], workers: int
) -> None:
    """No more pixels decoded at once than one image may have (``DEFAULT_MAX_PIXELS``, here 100 x 100): 80 x 80
    images run one at a time (with decode threads, the next one decodes while one runs), and none is kept once its
    batch has run; 40 x 40 ones still share the batches; answers, order and bad inputs are as before."""
    import cnnapps.datasets.io as io
    from cnnapps.apps.common.batching import map_images

    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 100 * 100)
    calls: list[int] = []

    def run(images: list[np.ndarray]) -> list[int]:
        calls.append(len(images))
        return [int(rgb.sum()) for rgb in images]

    paths = pngs(tmp_path, 80)
    large = [*paths[:3], b"not an image", *paths[3:]]
    done = map_images(large, run, 4, workers=workers)
    assert calls == [1] * 6, "each large image runs alone"
    assert decoded_alive[0] <= 1 + (workers > 0), f"{decoded_alive[0]} decoded images alive at once"
    alone = [map_images(path, run, 4)[0] for path in large]
    assert [(n, o, e) for n, _, o, e in done] == [(n, o, e) for n, _, o, e in alone]
    assert done[3][1] is None and "not an image" in done[3][3]
    assert done[0][1] == (80, 80)  # the image's height and width, without its pixels
    calls.clear()
    map_images(pngs(tmp_path, 40), run, 4, workers=workers)
    assert calls == [4, 2]  # 1,600 pixels each: as many share a call as before


def test_small_images_share_one_call() -> None:
    from cnnapps.apps.common.batching import map_images

    calls: list[int] = []

    def run(images: list[np.ndarray]) -> list[int]:
        calls.append(len(images))
        return [int(rgb[0, 0, 0]) for rgb in images]

    done = map_images([np.full((64, 64, 3), i, np.uint8) for i in range(64)], run, 64)
    assert calls == [64] and [output for _, _, output, _ in done] == list(range(64))


def test_preprocessed_on_the_device_a_batch_is_cut_by_its_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded images wait for their batch there (uint8, resized on the device): cut as ``map_images`` cuts them; on
    the CPU each is resized as it is decoded, so its batches stay whole."""
    import cnnapps.datasets.io as io

    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 100 * 100)
    paths = pngs(tmp_path, 80)
    device, _ = batches_seen(BatchRunner(SPECS, torch.device("cpu"), 3, workers=0, preprocess_on="device"), paths)
    cpu, _ = batches_seen(BatchRunner(SPECS, torch.device("cpu"), 3, workers=0), paths)
    assert [len(batch[SPECS[0]]) for batch in device] == [1] * 6
    assert [len(batch[SPECS[0]]) for batch in cpu] == [3, 3]


def test_a_python_caller_decodes_a_batch_of_large_images_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_alive: list[int]
) -> None:
    """``cnnapps.load(...).predict(many large files)`` holds no more decoded pixels at once than the service does."""
    import cnnapps
    import cnnapps.datasets.io as io

    caption = Path(__file__).parents[2] / "fixtures" / "model_files_v1" / "caption.safetensors"
    predictor = cnnapps.load(caption, device="cpu")
    paths = pngs(tmp_path, 80)
    alone = [predictor.predict(path)[0].to_dict() for path in paths]
    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 100 * 100)
    decoded_alive[0] = 0
    assert [result.to_dict() for result in predictor.predict(paths)] == alone
    assert decoded_alive[0] == 1
