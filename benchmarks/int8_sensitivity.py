"""Where EfficientNet-Lite0's INT8 answers change: quantization simulated in PyTorch, one part at a time.

``cnnapps export --int8`` keeps EfficientNet-Lite0's top-1 on about 78 % of the held-out photo crops of
benchmarks/engines.py. This script asks what that figure is made of, on the same images (the same crops, the same
calibration photos, the same preprocessing): the bundled model with its batch norms folded into the convolutions
(as the exported graph has them), then

- weights rounded per output channel to 7 bits (what the export stores) or 8, activations left fp32;
- activations rounded to uint8 (every convolution's input, ranges from the calibration images' min and max),
  weights left fp32;
- both, as the export does; both with the stem convolution (the first, reading the image) left fp32;
- each convolution alone rounded (its weights and its input), everything else fp32: the top-1 answers it changes.

Top-1 agreement with the fp32 model on the held-out images, and among the images whose fp32 top two probabilities
are at least 0.05 apart (near-ties change with any rounding). Beside them, how far these answers move without any
quantization (the floor any 8-bit model is judged against): the fp32 model on the same photos with noise of one grey
level added (Gaussian, sigma 1/255 of the pixel range, before normalisation) or saved once more as JPEG (quality 95),
and the whole model in fp16.

    python benchmarks/int8_sensitivity.py [--check-images 100] [--calibration-images 64] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engines import CALIBRATION_PHOTOS, CHECK_PHOTOS, image_paths, write_variants  # noqa: E402
from recording import describe_machine, record  # noqa: E402

from cnnapps.quantize import CLEAR_MARGIN  # noqa: E402

TITLE = "INT8 on EfficientNet-Lite0: where the answers change (simulated)"
MARGIN = CLEAR_MARGIN  # the export's check calls the same images clear


def folded(model: Any) -> Any:
    """A copy of ``model`` whose batch norms are folded into the convolution before each (module order), each
    batch norm then the identity (its activation, if any, kept)."""
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model).eval()
    conv = None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                conv = module
            elif isinstance(module, nn.BatchNorm2d) and conv is not None:
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(module.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(module.bias + (bias - module.running_mean) * scale)
                module.running_mean.zero_(), module.running_var.fill_(1 - module.eps)
                module.weight.fill_(1), module.bias.zero_()
                conv = None
    return model


def round_weights(weight: Any, bits: int) -> Any:
    """Symmetric per-output-channel rounding to ``bits`` bits (the export's int8 weights use 7)."""
    top = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12) / top
    return (weight / scale).round().clamp(-top, top) * scale


def simulate(model: Any, x: Any, cal: Any, weight_bits: int | None, activations: bool, only: set[str] | None = None,
             skip: tuple[str, ...] = ()) -> Any:  # fmt: skip
    """Logits of ``model`` on ``x`` with the convolutions named in ``only`` (all when None; minus ``skip``) rounded:
    weights to ``weight_bits``, inputs to uint8 with min/max ranges from ``cal``."""
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    chosen = {n: m for n, m in convs.items() if (only is None or n in only) and not n.endswith(skip)}
    with torch.no_grad():
        if weight_bits:
            for module in chosen.values():
                module.weight.copy_(round_weights(module.weight, weight_bits))
        hooks = []
        if activations:
            ranges: dict[str, list[float]] = {}

            def observe(name: str) -> Any:
                def hook(_: Any, inputs: tuple) -> None:
                    low, high = ranges.setdefault(name, [0.0, 0.0])
                    ranges[name] = [min(low, inputs[0].min().item()), max(high, inputs[0].max().item())]

                return hook

            for name, module in chosen.items():
                hooks.append(module.register_forward_pre_hook(observe(name)))
            for i in range(0, len(cal), 16):
                model(cal[i : i + 16])
            for hook in hooks:
                hook.remove()

            def rounded(name: str) -> Any:
                low, high = ranges[name]
                scale = max(high - low, 1e-12) / 255
                zero = round(-low / scale)
                return lambda _, inputs: (((inputs[0] / scale).round() + zero).clamp(0, 255) - zero) * scale

            for name, module in chosen.items():
                module.register_forward_pre_hook(rounded(name))
        return torch.cat([model(x[i : i + 16]) for i in range(0, len(x), 16)])


def resave(images: list[Any], folder: Path) -> list[Path]:
    """``images`` (RGB uint8) written to ``folder`` as JPEG, quality 95: the files to read back."""
    import cv2
    import numpy as np

    out = []
    for k, rgb in enumerate(images):
        out.append(folder / f"{k:04d}.jpg")
        cv2.imwrite(str(out[-1]), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-images", type=int, default=100)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch import nn

    import cnnapps
    from cnnapps.datasets.io import read_image

    member = cnnapps.load("efficientnet_lite0", device="cpu").members[0]
    with tempfile.TemporaryDirectory(prefix="cnnapps-int8-") as name:
        tmp = Path(name)
        write_variants(tmp / "check", CHECK_PHOTOS, args.check_images, seed=2)
        write_variants(tmp / "cal", CALIBRATION_PHOTOS, args.calibration_images, seed=1)
        x, cal = (torch.from_numpy(np.stack([member.preprocess(read_image(p)) for p in image_paths(tmp / part)]))
                  for part in ("check", "cal"))  # fmt: skip
        photos = [read_image(p) for p in image_paths(tmp / "check")]
    model = folded(member.model.eval())
    with torch.no_grad():
        reference = model(x)
        original = member.model(x)
    assert (reference.argmax(1) == original.argmax(1)).all(), "folding the batch norms changed an answer"
    probs = reference.softmax(1)
    top2 = probs.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) >= MARGIN

    def agreement(logits: Any) -> tuple[float, float]:
        same = logits.argmax(1) == reference.argmax(1)
        return same.float().mean().item(), same[clear].float().mean().item()

    rows = []
    std = torch.tensor(member.preprocess.std).reshape(1, 3, 1, 1)
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * (1 / 255) / std
    with tempfile.TemporaryDirectory(prefix="cnnapps-int8-") as name:
        resaved = torch.from_numpy(np.stack([member.preprocess(read_image(p)) for p in resave(photos, Path(name))]))
    with torch.no_grad():
        for label, logits in (
            ("nothing: fp32, one grey level of noise on the input", model(noisy)),
            ("nothing: fp32, the photos saved once more as JPEG (quality 95)", model(resaved)),
            ("everything in fp16 (weights and activations)", model.half()(x.half()).float()),
        ):
            rows.append((label, *agreement(logits)))
            print(f"{label}: {rows[-1][1]:.1%} ({rows[-1][2]:.1%} of the clear ones)", flush=True)
            model.float()
    for label, kwargs in (
        ("weights 8 bits per channel, activations fp32", dict(weight_bits=8, activations=False)),
        ("weights 7 bits per channel (the export's), activations fp32", dict(weight_bits=7, activations=False)),
        ("activations uint8 (min/max), weights fp32", dict(weight_bits=None, activations=True)),
        ("weights 7 bits and activations uint8 (as the export)", dict(weight_bits=7, activations=True)),
        ("as the export, the stem convolution fp32", dict(weight_bits=7, activations=True, skip=("conv_stem",))),
    ):
        with torch.no_grad():
            rows.append((label, *agreement(simulate(model, x, cal, **kwargs))))
        print(f"{label}: {rows[-1][1]:.1%} ({rows[-1][2]:.1%} of the clear ones)", flush=True)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    alone = []
    for name in convs:
        with torch.no_grad():
            changed = (simulate(model, x, cal, 7, True, only={name}).argmax(1) != reference.argmax(1)).sum().item()
        alone.append((changed, name))
    alone.sort(key=lambda t: -t[0])
    worst = ", ".join(f"{name.removeprefix('model.')} {n}" for n, name in alone[:6])

    body = (
        f"## {TITLE}\n\n"
        f"`python benchmarks/int8_sensitivity.py --check-images {args.check_images} --calibration-images "
        f"{args.calibration_images}` on {describe_machine('cpu')}. The bundled EfficientNet-Lite0 with its batch "
        "norms folded into the convolutions (no answer changed), on the held-out photo crops and calibration photos "
        f'of benchmarks/engines.py; rounding simulated in PyTorch. "Clear": the {int(clear.sum())} of {len(x)} '
        f"images whose fp32 top two probabilities are at least {MARGIN} apart.\n\n"
        "| rounded | top-1 agreement with fp32 | on the clear images |\n| --- | ---: | ---: |\n"
        + "".join(f"| {label} | {a:.1%} | {c:.1%} |\n" for label, a, c in rows)
        + f"\nEach of the {len(convs)} convolutions rounded alone (weights 7 bits, input uint8), the answers it "
        f"changes, most first: {worst}; {sum(1 for n, _ in alone if n == 0)} change none.\n"
    )
    record(TITLE, body, args.write)


if __name__ == "__main__":
    main()
