"""What the index commands print: the counts and failures of every write in its JSON, the paths `index remove` did
not find, an unfinished build in `index info` and `retrieve`, and dedup's count of the images it looked at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnapps.apps.retrieve.index import Index
from tests.apps.retrieve.conftest import TINY_MODEL
from tests.apps.retrieve.test_index_states import INTERRUPTED, StopAfter

MODEL = ["--model", str(TINY_MODEL), "--device", "cpu"]


@pytest.fixture()
def photos(stand_ins, tmp_path: Path) -> Path:
    """Two small images and a file that does not decode."""
    for i in range(2):
        stand_ins.write_png(tmp_path / "photos" / f"{i}.png", seed=i, size=16)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "photos"


def test_build_and_add_json_carry_what_was_added_and_what_failed(run_cli, stand_ins, photos, tmp_path) -> None:
    broken = str(photos / "broken.png")
    code, out, _ = run_cli("index", "build", photos, "--index", tmp_path / "idx", *MODEL, "--json")
    report = json.loads(out)
    assert code == 1 and (report["added"], report["items"]) == (2, 2)
    assert [f["path"] for f in report["failed"]] == [broken]
    more = stand_ins.write_png(tmp_path / "more.png", seed=7, size=16)
    code, out, _ = run_cli("index", "add", more, broken, "--index", tmp_path / "idx", "--json")
    report = json.loads(out)
    assert code == 1 and (report["added"], report["items"]) == (1, 3)
    assert [f["path"] for f in report["failed"]] == [broken]


def test_remove_names_the_paths_it_did_not_find_and_counts_what_it_removed(run_cli, photos, tmp_path) -> None:
    index = tmp_path / "idx"
    assert run_cli("index", "build", photos / "0.png", photos / "1.png", "--index", index, *MODEL)[0] == 0
    absent = [str(tmp_path / f"nosuch{i}.png") for i in range(4)]
    code, out, err = run_cli("index", "remove", photos / "0.png", *absent, "--index", index, "--json")
    assert code == 1 and (json.loads(out)["removed"], json.loads(out)["items"]) == (1, 1)
    assert err.strip() == f"4 paths given not in {index}: {', '.join(absent[:3])} and 1 more"
    code, _, err = run_cli("index", "remove", photos / "0.png", "--index", index)
    assert code == 1 and err.strip() == f"1 path given not in {index}: {photos / '0.png'}"


def test_info_and_retrieve_say_a_build_was_interrupted(run_cli, tiny_embedder, photos, tmp_path) -> None:
    index = tmp_path / "idx"
    files = [str(photos / "0.png"), str(photos / "1.png")]
    with pytest.raises(KeyboardInterrupt):
        Index.build(index, files, StopAfter(tiny_embedder, 1), checkpoint=1)
    warning = f"warning: {index}: {INTERRUPTED} (1 image indexed so far)"
    code, out, err = run_cli("index", "info", "--index", index)
    assert code == 0 and "unfinished: build" in out and err.strip() == warning
    code, out, err = run_cli("index", "info", "--index", index, "--json")
    assert code == 0 and json.loads(out)["unfinished"] == "build"
    code, out, err = run_cli("retrieve", "-q", files[0], "--index", index, "--json")
    assert code == 0 and len(json.loads(out)[0]["results"]) == 1 and err.strip() == warning  # was silent
    code, _, err = run_cli("index", "add", files[1], "--index", index)
    assert code == 2 and err.strip() == f"error: {index}: {INTERRUPTED}"
    assert run_cli("index", "build", *files, "--index", index, *MODEL)[0] == 0  # resumes
    code, out, err = run_cli("index", "info", "--index", index)
    assert code == 0 and "unfinished" not in out + err


def test_dedup_counts_the_images_it_embedded(run_cli, photos) -> None:
    code, out, _ = run_cli("dedup", photos, "--model", TINY_MODEL)
    assert code == 1 and " among 2 images " in out  # was 3: the file that failed counted
