"""The plain way to classify a folder: PIL + torchvision transforms + the same net, eager fp32, batch 32.

Prints {"path": top-1 index} as JSON. Used by classify_throughput.py as the reference.

    python benchmarks/plain_classify.py FOLDER [DEVICE]
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from cnnapps.backbones import create_backbone


def main(folder: str, device: str = "cpu") -> None:
    net = create_backbone("efficientnet_lite0", weights="imagenet").eval().to(device)
    spec = net.preprocess
    tf = transforms.Compose(
        [
            transforms.Resize(spec.resize),
            transforms.CenterCrop(spec.input_size[1]),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    out = {}
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            chunk = paths[i : i + 32]
            batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in chunk]).to(device)
            for p, k in zip(chunk, net(batch).argmax(1).tolist(), strict=True):
                out[p] = k
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
