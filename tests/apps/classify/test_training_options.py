"""Training options of ``cnnapps train classify``: class weights, the balanced sampler, the logit-adjusted loss,
EMA, gradient accumulation, MixUp / CutMix, RandAugment / TrivialAugment, layer-wise lr decay and the
transfer-learning presets."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnapps.apps.classify.balance import balanced_sampler, class_weights
from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import ConfigError, load_config


def classify_config(data: Path | str, out: Path | str, **overrides) -> ClassifyConfig:
    """tests/conftest.py's tiny LeNet-5 run, with the classification options."""
    settings = dict(
        data=str(data), backbone="lenet5", weights="none", epochs=1, batch_size=4, lr=0.01, workers=0,
        progress=False, augment="none", out=str(out), val_split=0.3, dropout=0.0, backbone_kwargs={"in_channels": 3},
    )  # fmt: skip
    settings.update(overrides)
    return load_config(None, ClassifyConfig, **settings)


def tiny_module(class_prior: torch.Tensor | None = None, **overrides):
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.backbones import create_backbone

    config = classify_config("unused", "unused", **overrides)
    torch.manual_seed(0)
    backbone = create_backbone("lenet5", weights=None, in_channels=3)
    model = Classifier(backbone, 3, 0.0, ["a", "b", "c"])
    return ClassificationModule(model, config, class_prior=class_prior), config


# -- class weights and the balanced sampler ---------------------------------------------------------------------
def test_auto_class_weights_are_inverse_frequency_with_mean_one() -> None:
    labels = [0] * 8 + [1] * 2 + [2] * 4
    weights = class_weights("auto", labels, ["a", "b", "c"])
    inverse = np.array([1 / 8, 1 / 2, 1 / 4])
    assert weights == pytest.approx(inverse / inverse.mean())
    assert weights.mean() == pytest.approx(1.0) and weights[1] == pytest.approx(4 * weights[0])


@pytest.mark.parametrize(
    ("name", "text"),
    [("w.yaml", "b: 3\na: 0.5\n"), ("w.json", '{"b": 3, "a": 0.5}'), ("w.csv", "class,weight\nb,3\na,0.5\n"),
     ("w.yml", "yes: 3\n01: 0.5\n"),  # names YAML would read as a boolean and a number
     ("bom.csv", "\ufeffb,3\na,0.5\n")],  # Excel's "CSV UTF-8": a byte-order mark first
)  # fmt: skip
def test_class_weight_files(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    names = ["01", "yes", "c"] if name == "w.yml" else ["a", "b", "c"]
    assert class_weights(str(path), [0, 1, 2], names).tolist() == [0.5, 3.0, 1.0]  # c: left out, 1


def test_class_weight_file_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("a: 1\nzebra: 2\n")
    with pytest.raises(ConfigError, match=r"^class_weights: .*w.yaml: unknown classes 'zebra' \(the classes are a, b"):
        class_weights(str(path), [0, 1], ["a", "b"])
    path.write_text("a: heavy\n")
    with pytest.raises(ConfigError, match=r"class_weights: .*a: expected a weight above 0, not 'heavy'"):
        class_weights(str(path), [0, 1], ["a", "b"])
    with pytest.raises(ConfigError, match=r"class_weights: .*missing\.yaml: no such file"):
        class_weights(str(tmp_path / "missing.yaml"), [0, 1], ["a", "b"])
    twice = tmp_path / "w.csv"
    twice.write_text("a,2\na,3\n")  # the last one was taken, silently
    with pytest.raises(ConfigError, match=r"class_weights: .*w\.csv: not readable \(class 'a' is given twice\)"):
        class_weights(str(twice), [0, 1], ["a", "b"])
    (tmp_path / "w.json").write_text('{"a": 2, "a": 3}')
    with pytest.raises(ConfigError, match=r"class_weights: .*w\.json: not readable \(class 'a' is given twice\)"):
        class_weights(str(tmp_path / "w.json"), [0, 1], ["a", "b"])
    (tmp_path / "w.yaml").write_text("a: 2\nb: 1\na: 3\n")
    with pytest.raises(ConfigError, match=r"class_weights: .*w\.yaml: not readable \('a' is given twice \(line 3\)\)"):
        class_weights(str(tmp_path / "w.yaml"), [0, 1], ["a", "b"])


def test_balanced_sampler_draws_minority_classes_as_often_as_majority() -> None:
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = balanced_sampler(labels, 3, seed=0)
    assert len(sampler) == len(labels)  # an epoch is as many draws as images
    draws = np.array([labels[i] for _ in range(100) for i in sampler])  # 10,000 draws
    shares = np.bincount(draws, minlength=3) / len(draws)
    assert shares == pytest.approx([1 / 3] * 3, abs=0.03)  # shuffled, class 2 would be 1 %


def test_logit_adjusted_loss_learns_balanced_scores() -> None:
    """A free logit vector trained on 90/9/1 labels: plain cross-entropy learns the prior (softmax = class shares),
    the logit-adjusted loss learns equal scores, so no class wins by its frequency alone."""
    prior = torch.tensor([90.0, 9.0, 1.0])
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    learned = {}
    for tau in (0.0, 1.0):
        module, _ = tiny_module(logit_adjust=tau, class_prior=prior)
        assert module.logit_offset.tolist() == pytest.approx((tau * (prior / 100).log()).tolist())
        logits = torch.zeros(3, requires_grad=True)
        optimiser = torch.optim.SGD([logits], lr=1.0)
        for _ in range(2000):
            optimiser.zero_grad()
            module.loss(module.adjusted(logits.expand(len(labels), 3)), labels).backward()
            optimiser.step()
        learned[tau] = logits.detach().softmax(0)
    assert learned[0.0].tolist() == pytest.approx([0.9, 0.09, 0.01], abs=0.01)
    assert learned[1.0].tolist() == pytest.approx([1 / 3] * 3, abs=0.01)


# -- EMA --------------------------------------------------------------------------------------------------------
def test_ema_weights_follow_the_decay_formula() -> None:
    module, _ = tiny_module(ema=True, ema_decay=0.9)
    model, ema = module.model, module.ema.module
    weight = lambda m: m.fc.weight.detach().clone()  # noqa: E731
    expected = None
    for step in range(1, 8):
        with torch.no_grad():  # a stand-in for an optimiser step
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        module.update_ema(step)
        t = step - 1
        decay = 0.0 if t == 0 else min(0.9, 1 - (1 + t) ** -0.75)
        expected = weight(model) if expected is None else decay * expected + (1 - decay) * weight(model)
        assert torch.allclose(weight(ema), expected, atol=1e-6), step
    assert not torch.allclose(weight(ema), weight(model))  # averaged: not the raw weights
    assert module.ema.get_decay(1000) == pytest.approx(0.9)  # capped at ema_decay once warmed up
    assert not any(p.requires_grad for p in ema.parameters())


def test_the_averaged_weights_win_a_tie_by_a_lower_loss() -> None:
    from cnnapps.apps.classify.module import ema_won

    tie = {"val_top1": 0.9, "val_loss": 0.4, "val_ema_top1": 0.9, "val_ema_loss": 0.2}
    assert ema_won(tie, "top1") and not ema_won({**tie, "val_ema_loss": 0.6}, "top1")
    assert ema_won({**tie, "val_ema_top1": 0.95, "val_ema_loss": 0.9}, "top1")  # the score first
    assert not ema_won({**tie, "val_ema_loss": float("nan")}, "top1")  # a loss that is no number loses the tie


def test_accumulate_ema_mix_llrd_class_weights_and_randaugment_train_together(
    colour_set: Path, tmp_path: Path, caplog
) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.classify.train import train_classifier

    out = tmp_path / "options"
    config = classify_config(colour_set, out, epochs=2, accumulate=2, ema=True, mix="both", class_weights="auto",
                             llrd=0.5, augment="randaugment")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cnnapps"):
        metrics = train_classifier(config)
    header = [r.getMessage() for r in caplog.records]
    assert any("batch 8 = 4 per process x 1 per node x 1 node x 2 accumulated batches" in line for line in header)
    assert any(line.startswith("llrd 0.5: lr head 0.01, C5 0.005") for line in header)
    # accumulate=2: one optimiser step per two batches (the epoch's last batch always steps)
    batches = math.ceil(metrics["train_images"] / 4)
    assert batches >= 4
    assert metrics["optimizer_steps"] == 2 * math.ceil(batches / 2)
    assert (metrics["global_batch_size"], metrics["accumulate"]) == (8, 2)
    # EMA: validated beside the raw weights; the model file holds the better one, and metrics.json says which
    written = json.loads((out / "metrics.json").read_text())
    ema = written["ema"]
    assert ema["weights"] in ("raw", "ema") and {"raw_val_top1", "ema_val_top1"} <= set(ema)
    assert all("val_ema_top1" in h and "val_select_top1" in h for h in written["history"])
    best = max(written["history"], key=lambda h: h["val_select_top1"])
    assert (ema["raw_val_top1"], ema["ema_val_top1"]) == (best["val_top1"], best["val_ema_top1"])
    state = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    saved = load_classifier(out / "model.safetensors").model.fc.weight
    raw, averaged = state["model.fc.weight"], state["ema.module.fc.weight"]
    assert not torch.equal(raw, averaged)
    assert torch.equal(saved, averaged if ema["weights"] == "ema" else raw)


def test_a_resumed_run_moves_the_ema_only_on_optimiser_steps(colour_set: Path, tmp_path: Path) -> None:
    """At the first batch after --resume the EMA has seen every optimiser step so far (it read step 0 then, so the
    first accumulating batch, which steps nothing, moved the averaged weights)."""
    import lightning as L

    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.training import extra_callbacks

    seen: list[tuple[int, int]] = []

    class FirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if not seen:
                seen.append((module._ema_step, trainer.global_step))

    train_classifier(classify_config(colour_set, tmp_path / "run", epochs=1, accumulate=2, ema=True))
    with extra_callbacks(lambda plan: FirstBatch()):
        train_classifier(classify_config(colour_set, tmp_path / "run", epochs=2, accumulate=2, ema=True, resume=True))
    ((ema_step, step),) = seen
    assert step > 0 and ema_step == step


# -- accumulate (every task) ------------------------------------------------------------------------------------
def test_accumulate_is_in_the_effective_batch() -> None:
    config = classify_config("x", "y", accumulate=3, batch_size=16)
    assert config.global_batch_size == 48
    assert config.scaling_report().startswith("batch 48 = 16 per process x 1 per node x 1 node x 3 accumulated")


# -- MixUp / CutMix ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mix_gives_soft_targets_with_the_right_mass(mix: str) -> None:
    module, _ = tiny_module(mix=mix, label_smoothing=0.1)
    np.random.seed(0)  # timm draws lam from numpy
    x = torch.rand(5, 3, 32, 32)  # odd: the last image keeps its own target
    y = torch.tensor([0, 1, 2, 2, 1])  # no image shares its class with its flipped partner
    mixed, soft = module.mix_batch(x.clone(), y)
    assert soft.shape == (5, 3) and torch.allclose(soft.sum(1), torch.ones(5))
    smooth = torch.full((5, 3), 0.1 / 3).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / 3)
    assert torch.allclose(soft[4], smooth[4]) and torch.equal(mixed[4], x[4])
    # the even part: lam x (smoothed one-hot) + (1 - lam) x (the flipped batch's), one lam for the batch
    own, other = smooth[:4], smooth[:4].flip(0)
    lam = float((soft[0] - other[0])[0] / (own[0] - other[0])[0])
    assert 0.0 < lam < 1.0
    assert torch.allclose(soft[:4], lam * own + (1 - lam) * other, atol=1e-5)
    assert not torch.equal(mixed[:4], x[:4])
    if mix == "cutmix":  # each pixel from one of the two images
        pixel_from = (mixed[:4] == x[:4]) | (mixed[:4] == x[:4].flip(0))
        assert bool(pixel_from.all())


# -- layer-wise lr decay and the transfer presets ---------------------------------------------------------------
def test_llrd_gives_each_stage_its_lr() -> None:
    module, _ = tiny_module(llrd=0.5, lr=0.01)
    groups = module.configure_optimizers()["optimizer"].param_groups
    stages = module.model.backbone.stage_parameters()
    assert [g["lr"] for g in groups] == pytest.approx([0.01 * 0.5**k for k in range(len(stages) + 1)])
    assert groups[0]["params"] == list(module.model.fc.parameters())
    assert groups[-1]["params"] == stages[0]  # the stem with the first stage: the smallest lr
    assert sum(len(g["params"]) for g in groups) == len(list(module.model.parameters()))


def test_presets_freeze_the_trunk_or_its_first_half() -> None:
    from cnnapps.apps.classify.train import _apply_preset
    from cnnapps.backbones import create_backbone

    small = create_backbone("lenet5", weights=None, in_channels=3)
    _apply_preset(classify_config("x", "y", preset="small-data"), small)
    assert not any(p.requires_grad for p in small.parameters())
    more = create_backbone("lenet5", weights=None, in_channels=3)
    config = classify_config("x", "y", preset="more-data")
    line = _apply_preset(config, more)[0]
    stages = more.stage_parameters()
    half = len(stages) // 2
    assert all(not p.requires_grad for group in stages[:half] for p in group)
    assert all(p.requires_grad for group in stages[half:] for p in group)
    assert config.layer_decay == 0.5 and "llrd 0.5" in line
    assert classify_config("x", "y", preset="more-data", llrd=0.8).layer_decay == 0.8  # given values win


def test_balanced_sampler_and_small_data_preset_train(colour_set: Path, tmp_path: Path) -> None:
    from cnnapps.apps.classify.train import train_classifier

    metrics = train_classifier(classify_config(colour_set, tmp_path / "balanced", sampler="balanced",
                                               preset="small-data", augment="trivialaugment"))  # fmt: skip
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val_top1"] <= 1.0


# -- augmentation presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["randaugment", "trivialaugment"])
def test_automatic_augmentation_presets_build_and_change_images(preset: str) -> None:
    from torchvision.transforms import v2

    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.transforms import _policy, train_transform

    spec = Preprocess(input_size=(3, 32, 32), resize=37)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    policy = _policy(preset)
    assert isinstance(policy, v2.RandAugment if preset == "randaugment" else v2.TrivialAugmentWide)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    torch.manual_seed(0)
    assert any(not torch.equal(policy(tensor), tensor) for _ in range(5))
    torch.manual_seed(0)
    floats = train_transform(preset, spec)
    out = [floats(rgb) for _ in range(3)]
    assert out[0].shape == (3, 32, 32) and out[0].dtype == np.float32
    assert not np.allclose(out[0], out[1])
    uint8 = train_transform(preset, spec, output="uint8")(rgb)  # normalised on the device
    assert uint8.shape == (3, 32, 32) and uint8.dtype == np.uint8


# -- one-line errors naming the setting -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"llrd": 0.0}, "llrd: must be in (0, 1], not 0.0"),
        ({"llrd": 1.5}, "llrd: must be in (0, 1], not 1.5"),
        ({"ema_decay": 1.0}, "ema_decay: must be between 0 and 1, not 1.0"),
        ({"accumulate": 0}, "accumulate: must be at least 1, not 0"),
        ({"sampler": "random"}, "sampler: 'random' is not one of shuffle, balanced"),
        ({"mix": "blend"}, "mix: 'blend' is not one of none, mixup, cutmix, both"),
        ({"preset": "tiny"}, "preset: 'tiny' is not one of none, small-data, more-data"),
        ({"augment": "autoaugment"}, "augment: 'autoaugment' is not one of default, alexnet, creative, randaugment"),
        ({"preset": "small-data", "freeze": 2}, "freeze: preset small-data freezes the whole trunk"),
        ({"class_weights": "auto", "sampler": "balanced"}, "class_weights: the balanced sampler already"),
        ({"ema": "often"}, "ema: expected true or false, not 'often'"),
        ({"logit_adjust": -1.0}, "logit_adjust: must be 0 (off) or more, not -1.0"),
        ({"logit_adjust": 1.0, "sampler": "balanced"}, "logit_adjust: it already corrects for the class frequencies"),
        ({"logit_adjust": 1.0, "class_weights": "auto"}, "logit_adjust: it already corrects"),
    ],
)
def test_bad_values_are_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        classify_config("x", "y", **overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_prepare_weighs_the_loss_and_draws_by_class_from_the_training_split(tmp_path: Path) -> None:
    from torch.utils.data import WeightedRandomSampler

    from cnnapps.apps.classify.train import _prepare
    from tests.conftest import write_colour_set

    data = write_colour_set(tmp_path / "colours", per_class=10)
    for path in sorted((data / "red").iterdir())[3:]:  # red: 3 images, blue and green 10
        path.unlink()
    plan = _prepare(classify_config(data, tmp_path / "a", class_weights="auto", val_split=0.2), torch.device("cpu"))
    labels = plan.train_loader.dataset.items.labels
    counts = np.bincount(labels, minlength=3)
    expected = (1 / counts) / (1 / counts).mean()
    assert counts[2] < counts[0]
    assert plan.module.loss.weight.tolist() == pytest.approx(expected.tolist())
    assert plan.module.val_loss_fn.weight is None  # val_loss stays comparable across settings
    balanced = _prepare(classify_config(data, tmp_path / "b", sampler="balanced", val_split=0.2), torch.device("cpu"))
    assert isinstance(balanced.train_loader.sampler, WeightedRandomSampler)
    assert balanced.module.loss.weight is None
    adjusted = _prepare(classify_config(data, tmp_path / "c", logit_adjust=1.5, val_split=0.2), torch.device("cpu"))
    labels = adjusted.train_loader.dataset.items.labels
    counts = np.bincount(labels, minlength=3)
    assert adjusted.module.logit_offset.tolist() == pytest.approx((1.5 * np.log(counts / counts.sum())).tolist())
    assert adjusted.module.loss.weight is None and not isinstance(adjusted.train_loader.sampler, WeightedRandomSampler)
    assert any(line.startswith("logit adjust 1.5: training logits shifted by blue ") for line in adjusted.header)
    plain = _prepare(classify_config(data, tmp_path / "d", val_split=0.2), torch.device("cpu")).module
    assert not plain.logit_adjust and plain.adjusted(torch.ones(2, 3)).tolist() == [[1.0] * 3] * 2
