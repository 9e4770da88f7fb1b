from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.common.config import ConfigError, load_config
from cnnapps.apps.retrieve.config import RetrieveConfig
from cnnapps.apps.retrieve.evaluate import evaluate_retrieval, retrieval_metrics
from cnnapps.apps.retrieve.train import train_retrieval
from cnnapps.datasets.folders import class_folders


def test_metrics_on_a_hand_computed_case() -> None:
    # four points on a line of angles: a a b b, with one b closer to the a's than to its partner
    angles = np.array([0.0, 0.1, 0.15, 1.2])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    m = retrieval_metrics(vectors, labels, ks=(1, 2))
    # nearest others: 0->1 (ok), 1->2 (miss), 2->1 (miss), 3->2 (ok)
    assert m["recall@1"] == pytest.approx(0.5)
    # within 2: 0:{1,2} ok, 1:{2,0} ok, 2:{1,0} miss, 3:{2,1} ok
    assert m["recall@2"] == pytest.approx(0.75)
    # R = 1 for everyone, so mAP@R is precision@1
    assert m["map@r"] == pytest.approx(0.5)


@pytest.mark.parametrize("loss", ["arcface", "multisimilarity"])
def test_metric_learning_run(loss: str, colour_set: Path, tmp_path: Path) -> None:
    config = load_config(
        None, RetrieveConfig,
        data=str(colour_set), backbone="lenet5", weights="none", loss=loss, embedding_size=16, epochs=3,
        batch_size=8, workers=0, progress=False, augment="none", out=str(tmp_path / "run"), val_split=0.3, lr=0.01,
    )  # fmt: skip
    metrics = train_retrieval(config)
    assert metrics["val_images"] == 9 and len(metrics["history"]) == 3
    assert {"model.safetensors", "metrics.json", "curves.png", "config.yaml"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["epochs"] == 3 and {"val_recall@1", "val_map@r"} <= set(written)
    embedder = cnnapps.load(tmp_path / "run" / "model.safetensors")
    assert embedder.dim == 16
    report = evaluate_retrieval(embedder, class_folders(colour_set))
    assert report["n"] == 30 and report["recall@1"] >= 0.9  # three colours separate easily


def test_retrieve_config_errors() -> None:
    with pytest.raises(ConfigError, match="loss: 'contrastive' is not one of arcface, multisimilarity, triplet"):
        load_config(None, RetrieveConfig, data="x", loss="contrastive")


@pytest.mark.parametrize("size", [1, 16_385])
def test_an_embedding_size_no_model_file_may_hold_is_refused_before_training(size: int) -> None:
    with pytest.raises(ConfigError, match=rf"^embedding_size: must be from 2 to 16,384, not {size}$"):
        load_config(None, RetrieveConfig, data="d", out="o", embedding_size=size)
