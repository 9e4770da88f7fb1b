"""The synthetic scene writers never write over a data set that is there, and a saved class map never replaces a
file."""

from __future__ import annotations

import numpy as np
import pytest

from cnnapps.apps.semantic import synthetic
from cnnapps.apps.semantic.result import SemanticResult
from cnnapps.files import OutputExistsError


@pytest.mark.parametrize("write", [synthetic.write_voc, synthetic.write_folders])
def test_writing_a_split_that_is_there_is_refused_and_leaves_it(tmp_path, write):
    write(tmp_path, "val", 2, seed=0, size=32)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(OutputExistsError):
        write(tmp_path, "val", 2, seed=5, size=32)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    write(tmp_path, "train", 1, seed=0, size=32)  # another split beside it is fine


def test_the_command_says_so_in_one_line(tmp_path, capsys):
    synthetic.main([str(tmp_path), "--train", "1", "--val", "1", "--size", "32", "--format", "folders"])
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main([str(tmp_path), "--train", "1", "--val", "1", "--size", "32", "--format", "folders"])
    assert str(exit_info.value).startswith("error: ") and "train" in str(exit_info.value)
    assert "\n" not in str(exit_info.value)


def test_save_mask_refuses_an_existing_file_unless_asked(tmp_path):
    result = SemanticResult(
        "x", labels=np.zeros((4, 5), np.int64), class_names=["a", "b"], colours=[(0, 0, 0), (9, 9, 9)]
    )
    taken = tmp_path / "holiday.png"
    taken.write_bytes(b"mine")
    with pytest.raises(OutputExistsError):
        result.save_mask(taken)
    assert taken.read_bytes() == b"mine"
    result.save_mask(taken, overwrite=True)
    assert taken.read_bytes().startswith(b"\x89PNG")
