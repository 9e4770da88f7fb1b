"""Synthetic captions read as English: the article follows the colour's first sound."""

from __future__ import annotations

import numpy as np

from cnnapps.datasets.synthetic import captioned_scene


def test_captions_say_an_orange_and_a_red() -> None:
    rng = np.random.default_rng(3)
    captions = [c for _ in range(80) for c in captioned_scene(rng, 96)[1]]
    orange = [c for c in captions if "orange" in c and "single" not in c]
    assert orange and all("an orange" in c and "a orange" not in c for c in orange)
    assert any(c.startswith("a red") for c in captions)


def test_an_existing_data_set_is_never_written_over(tmp_path, capsys) -> None:
    import json

    import pytest

    from cnnapps.datasets.synthetic import main

    (tmp_path / "train.json").write_text('{"my": "annotations"}')
    with pytest.raises(SystemExit) as done:
        main(["shapes", str(tmp_path), "--train", "1", "--val", "1", "--size", "64"])
    assert done.value.code == 2 and "train.json: already exists" in capsys.readouterr().err
    assert json.loads((tmp_path / "train.json").read_text()) == {"my": "annotations"}
    assert not (tmp_path / "train").exists()
    main(["shapes", str(tmp_path / "new"), "--train", "1", "--val", "1", "--size", "64"])  # a new folder is written
    assert len(json.loads((tmp_path / "new" / "val.json").read_text())["images"]) == 1
    (tmp_path / "new" / "train.json").unlink()  # the images of train/ are still there: refused too
    with pytest.raises(SystemExit):
        main(["shapes", str(tmp_path / "new"), "--train", "1", "--val", "1", "--size", "64"])
    assert not (tmp_path / "new" / "train.json").exists()
