"""k-fold cross-validation of detection data (``cnnapps train detect|segment|pose --kfold K``).

The training annotations and the validation ones (when ``val_data`` is given) are pooled: any format the
detection trainer reads (COCO JSON, YOLO, Pascal VOC, LabelMe, CVAT). Images are stratified by the category most
of their objects have (images without objects form a group of their own), and each fold is written as
OUT/fold-i/data/{train,val}.json, COCO files whose ``file_name`` is each image's absolute path (nothing is copied).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.common.kfold import FoldSource


def coco_folds(config: Any) -> FoldSource:
    """The pooled images of ``config.data`` (and ``config.val_data``) with their annotations, ready to be dealt."""
    from cnnapps.datasets.coco import CocoDataset

    sources = [CocoDataset(config.data, config.images, config.task)]
    if config.val_data:
        sources.append(CocoDataset(config.val_data, config.val_images or config.images, config.task))
    categories = sources[0].coco.dataset.get("categories", [])
    names = {c["id"]: c["name"] for c in categories}
    for other in sources[1:]:
        theirs = {c["id"]: c["name"] for c in other.coco.dataset.get("categories", [])}
        if theirs != names:
            raise ConfigError(f"kfold: {config.val_data} has other categories than {config.data}; the pooled "
                              "folds need one list of categories")  # fmt: skip
    images: list[dict[str, Any]] = []
    objects: list[list[dict[str, Any]]] = []
    for source in sources:
        for index, image_id in enumerate(source.image_ids):
            info = dict(source.coco.imgs[image_id], id=len(images) + 1)
            info["file_name"] = str(Path(source.image_path(index)).resolve())
            images.append(info)
            objects.append([dict(a, image_id=info["id"]) for a in source.coco.imgToAnns.get(image_id, [])])
    strata = []
    for anns in objects:
        counts = Counter(a["category_id"] for a in anns if not a.get("iscrowd"))
        strata.append(min(counts, key=lambda c: (-counts[c], c)) if counts else -1)

    def write(train: list[int], val: list[int], root: Path) -> dict[str, Any]:
        root.mkdir(parents=True, exist_ok=True)
        for part, chosen in (("train", train), ("val", val)):
            anns = [dict(a, id=n) for n, a in enumerate((a for i in chosen for a in objects[i]), start=1)]
            coco = {"images": [images[i] for i in chosen], "annotations": anns, "categories": categories}
            (root / f"{part}.json").write_text(json.dumps(coco))
        # file_name entries are absolute: the image folder is only what the trainer asks for
        return {"data": str(root / "train.json"), "images": str(root), "val_data": str(root / "val.json"),
                "val_images": str(root)}  # fmt: skip

    return FoldSource(strata, write)
