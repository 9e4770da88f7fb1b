"""The service answers from the index as it is now: images another process adds or removes are seen by the next
request (search, thumbnail, the model list)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from fastapi.testclient import TestClient

from cnnapps.serve.app import create_app

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"


def test_the_service_sees_what_another_writer_adds_and_removes(tmp_path: Path) -> None:
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        paths.append(str(tmp_path / name))
    embedder = Embedder(str(FIXTURES / "retrieve.safetensors"))
    Index.build(tmp_path / "idx", paths[:2], embedder)[0].close()
    with TestClient(create_app([], index=str(tmp_path / "idx")), base_url="http://localhost") as client:
        query = {"content": (tmp_path / "c.png").read_bytes(), "headers": {"content-type": "image/png"}}
        before = client.post("/v1/retrieve?k=5", **query).json()["results"]
        assert sorted(Path(h["path"]).name for h in before) == ["a.png", "b.png"]
        removed = next(h["id"] for h in before if h["path"].endswith("a.png"))
        writer = Index.open(tmp_path / "idx")  # another connection, as another process has
        writer.add([paths[2]], embedder)
        writer.remove([paths[0]])
        writer.close()
        after = client.post("/v1/retrieve?k=5", **query).json()["results"]
        assert sorted(Path(h["path"]).name for h in after) == ["b.png", "c.png"]  # it answered as before
        assert Path(after[0]["path"]).name == "c.png" and after[0]["score"] > 0.999
        assert client.get(f"/v1/retrieve/thumbnail?id={removed}").status_code == 404  # it was still served
        index_entry = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "index")
        assert index_entry["items"] == 2
        # an indexed file replaced by a pipe: refused at once (reading it waited for a writer that never came)
        kept = next(h for h in after if h["path"].endswith("b.png"))
        Path(kept["path"]).unlink()
        os.mkfifo(kept["path"])
        answer = client.get(f"/v1/retrieve/thumbnail?id={kept['id']}")
        assert answer.status_code == 404 and answer.json()["error"].startswith("indexed image: not a regular file")
        assert client.get("/v1/retrieve/thumbnail?id=1000&colour=red").status_code == 422  # not an option of it
