"""Model files whose tensors were damaged or tampered with after they were written: a dtype the model does not hold,
NaN or infinite weights, tensors of no declared part, a head kind its task does not build, a trunk that no longer
matches the fingerprint in the header. Each loaded silently before (converted, ignored, or answering NaN); each is
now a one-line error naming the file and the tensor, head or key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import cnnapps
from cnnapps.apps.modelfile import build_model, head_kinds, load_trunk, read_model_file, trunk_fingerprint
from cnnapps.apps.tasks import TASKS
from cnnapps.bundle import BundleError

V1 = Path(__file__).parent / "fixtures" / "model_files_v1"
HEAD_WEIGHT = "heads.classify.fc.weight"
IMAGE = np.full((32, 32, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-head LeNet-5 classifier file of the current format (the first-format fixture's weights)."""
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import save_model

    loaded = load_classifier(V1 / "classify.safetensors")
    path = tmp_path_factory.mktemp("intact") / "model.safetensors"
    save_model(path, "classify", loaded.model, "lenet5", {"in_channels": 3}, loaded.preprocess.to_dict())
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118


def _rewrite(source: Path, target: Path, tensors=None, meta=None) -> Path:
    """A copy of ``source`` whose tensors went through ``tensors`` and whose cnnapps header through ``meta``, written
    as a tool that edits weights writes it: the header kept, its fingerprint not updated."""
    stored, metadata = _read(source)
    header = json.loads(metadata["cnnapps"])
    save_file(tensors(dict(stored)) if tensors else stored, str(target),
              metadata={"cnnapps": json.dumps(meta(header) if meta else header)})  # fmt: skip
    return target


def _trunk_weight(path: Path) -> str:
    return next(k for k, v in _read(path)[0].items() if k.startswith("trunk.") and v.is_floating_point())


def _one_line(caught: pytest.ExceptionInfo, path: Path, message: str) -> None:
    text = str(caught.value)
    assert text.startswith(f"{path}") and message in text and "\n" not in text, text


def test_an_intact_file_loads_and_predicts(intact: Path) -> None:
    (result,) = cnnapps.load(intact, engine="eager", device="cpu").predict([IMAGE], top_k=3)
    scores = [p["score"] for p in result.to_dict()["predictions"]]
    assert len(scores) == 3 and np.isfinite(scores).all()
    model_file = read_model_file(intact)
    assert trunk_fingerprint(model_file) == model_file.trunk["fingerprint"]
    load_trunk(intact)


@pytest.mark.parametrize(
    ("which", "dtype", "message"),
    [
        ("head", torch.float64, "(classify head): fc.weight is stored as float64, the described model holds float32"),
        ("head", torch.float16, "(classify head): fc.weight is stored as float16, the described model holds float32"),
        ("head", torch.int64, "(classify head): fc.weight is stored as int64, the described model holds float32"),
        ("trunk", torch.int64, "is stored as int64, the described model holds float32"),
    ],
)
def test_a_tensor_of_another_dtype_is_refused(intact, tmp_path, which, dtype, message) -> None:
    """torch converts on loading: a float64 or int64 (rounded) tensor loaded silently before. cnnapps never writes
    reduced precision (mixed-precision training keeps float32 weights): float16 is refused too."""
    name = HEAD_WEIGHT if which == "head" else _trunk_weight(intact)
    damaged = _rewrite(intact, tmp_path / "damaged.safetensors", lambda t: {**t, name: t[name].to(dtype)})
    with pytest.raises(BundleError) as caught:
        cnnapps.load(damaged, engine="eager", device="cpu")
    _one_line(caught, damaged, message)
    if which == "trunk":
        with pytest.raises(BundleError) as caught:
            load_trunk(damaged)
        _one_line(caught, damaged, f"(trunk): {name.removeprefix('trunk.')} is stored as int64")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["head", "trunk"])
def test_nan_or_infinite_weights_are_refused_naming_the_first_tensor(intact, tmp_path, value, which) -> None:
    """They loaded and every prediction was NaN."""
    name = HEAD_WEIGHT if which == "head" else _trunk_weight(intact)

    def poisoned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weight = tensors[name].clone()
        weight.view(-1)[weight.numel() // 2] = value
        return {**tensors, name: weight}

    damaged = _rewrite(intact, tmp_path / "damaged.safetensors", poisoned)
    with pytest.raises(BundleError) as caught:
        cnnapps.load(damaged, engine="eager", device="cpu").predict([IMAGE])
    _one_line(caught, damaged, f": {name} holds NaN or infinite values")
    assert str(caught.value).startswith(f"{damaged}: {name} holds NaN or infinite values")


@pytest.mark.parametrize("stray", ["heads.ghost.fc.weight", "extra", "heads.classify", "trunk", "weights.fc.bias"])
def test_a_tensor_of_no_declared_part_is_refused_when_the_header_is_read(intact, tmp_path, stray) -> None:
    """An undeclared head's tensors or a stray name were never read, so the file loaded as if they were not there."""
    damaged = _rewrite(intact, tmp_path / "damaged.safetensors", lambda t: {**t, stray: torch.zeros(2)})
    with pytest.raises(BundleError) as caught:
        read_model_file(damaged)
    _one_line(caught, damaged, f": tensor {stray} is outside the trunk and the heads its header declares "
                               "(trunk.*, heads.classify.*)")  # fmt: skip
    with pytest.raises(BundleError, match="is outside the trunk"):
        cnnapps.load(damaged, engine="eager", device="cpu")


def test_a_second_declared_head_s_tensors_are_not_stray(intact, tmp_path) -> None:
    def two_heads(meta: dict) -> dict:
        return {**meta, "heads": {**meta["heads"], "again": meta["heads"]["classify"]}}

    def copied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            **tensors,
            **{k.replace(".classify.", ".again."): v.clone() for k, v in tensors.items() if ".classify." in k},
        }

    both = _rewrite(intact, tmp_path / "both.safetensors", copied, two_heads)
    assert list(read_model_file(both).heads) == ["classify", "again"]
    build_model(read_model_file(both), "again")


@pytest.mark.parametrize("kind", ["ghostly", "embedding", ""])
def test_a_head_kind_its_task_does_not_build_is_refused(intact, tmp_path, kind) -> None:
    """A classify head was built as the linear head whatever its kind said."""

    def renamed(meta: dict) -> dict:
        return {**meta, "heads": {"classify": {**meta["heads"]["classify"], "kind": kind}}}

    damaged = _rewrite(intact, tmp_path / "damaged.safetensors", meta=renamed)
    with pytest.raises(BundleError) as caught:
        cnnapps.load(damaged, engine="eager", device="cpu")
    _one_line(caught, damaged, f": heads.classify.kind: {kind!r} is not a kind of classify head this cnnapps builds "
                               "(linear)")  # fmt: skip


def test_every_task_knows_its_head_kinds_and_writes_one_of_them() -> None:
    for task in TASKS:
        assert head_kinds(task), task
    assert head_kinds("caption") == ("lstm", "transformer")
    assert head_kinds("segment") == ("rcnn-v1", "rcnn-v2")
    assert set(head_kinds("semantic")) == {"fcn", "deeplabv3", "lraspp", "fpn"}
    for task in ("classify", "retrieve", "segment", "pose", "caption"):  # the first-format files' heads still build
        (head,) = read_model_file(V1 / f"{task}.safetensors").heads.values()
        assert head.kind in head_kinds(task)


def test_a_trunk_changed_after_writing_does_not_pass_for_the_one_its_header_names(intact, tmp_path) -> None:
    """The stored fingerprint names an embedding's weights (an index refuses another model's): it was returned
    unchecked, so a file whose trunk had been changed passed for the one an index was built with."""
    name = _trunk_weight(intact)
    changed = _rewrite(intact, tmp_path / "changed.safetensors", lambda t: {**t, name: t[name] * 2})
    model_file = read_model_file(changed)
    with pytest.raises(BundleError) as caught:
        trunk_fingerprint(model_file)
    _one_line(caught, changed, ": its trunk does not match the fingerprint in its header")
    with pytest.raises(BundleError, match="its trunk does not match the fingerprint in its header"):
        cnnapps.load(changed, task="retrieve", device="cpu")
    cnnapps.load(changed, engine="eager", device="cpu").predict([IMAGE])  # a classifier does not use the fingerprint


def test_several_heads_and_none_named_says_how_to_name_one(intact, tmp_path) -> None:
    def two_heads(meta: dict) -> dict:
        return {**meta, "heads": {**meta["heads"], "again": meta["heads"]["classify"]}}

    both = _rewrite(intact, tmp_path / "both.safetensors", meta=two_heads)
    with pytest.raises(BundleError) as caught:
        read_model_file(both).head_named(task="classify")
    assert str(caught.value) == (f"{both}: has several heads (classify, again); name the one to use (--head NAME; in "
                                 "Python head=NAME)")  # fmt: skip
