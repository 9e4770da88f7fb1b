"""Detectors on registry backbones: torchvision checkpoint compatibility, shapes, freezing, model files."""

from __future__ import annotations

import pytest
import torch

from cnnapps.apps.detect.model import DetectorError, create_detector, load_detector, save_detector

SMALL = {
    "fpn_channels": 32,
    "min_size": 96,
    "max_size": 128,
    "box_batch_size_per_image": 32,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 100,  # a trunk without FPN (VGG's 512 maps) puts each proposal through a 25088-wide head
}
# torchvision's detectors and ours compared at 320 px and 20 boxes on both sides (torchvision's defaults, 800 px
# and 100 boxes through the mask head: the same comparison, several times the time)
REFERENCE_SIZE = {"min_size": 320, "max_size": 400, "box_detections_per_img": 20}


def _torchvision_reference(task: str) -> torch.nn.Module:
    """torchvision's *_resnet50_fpn exactly as its builders make it for COCO weights (frozen batch norm),
    with random weights and non-trivial batch-norm statistics."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    for m in body.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
    cls = {"segment": MaskRCNN, "detect": FasterRCNN, "pose": KeypointRCNN}[task]
    return cls(body, num_classes=2 if task == "pose" else 91, box_score_thresh=0.0, **REFERENCE_SIZE).eval()


@pytest.mark.parametrize("task", ["segment", "detect", "pose"])
def test_torchvision_checkpoint_gives_identical_outputs(task, tmp_path):
    reference = _torchvision_reference(task)
    path = tmp_path / f"{task}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_detector(task, "resnet50", weights=str(path), box_score_thresh=0.0, **REFERENCE_SIZE).eval()
    image = torch.rand(3, 160, 200, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference([image])[0], ours([image])[0]
    assert len(expected["boxes"]) > 0
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_v2_checkpoint_gives_identical_outputs(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(0)
    small = {"min_size": 128, "max_size": 160, "box_detections_per_img": 20}  # the same small run on both sides
    reference = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, box_score_thresh=0.0, **small).eval()
    torch.save(reference.state_dict(), tmp_path / "v2.pth")
    ours = create_detector("segment", "resnet50", weights=str(tmp_path / "v2.pth"), heads="v2", box_score_thresh=0.0,
                           **small)  # fmt: skip
    image = torch.rand(3, 128, 160)
    with torch.no_grad():
        expected, got = reference([image])[0], ours.eval()([image])[0]
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_coco_weights_offline_error_names_the_url():
    from cnnapps.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match=r"maskrcnn_resnet50_fpn_coco-bf2d0c1e\.pth.*https://"):
        create_detector("segment", "resnet50", weights="coco")


def test_wrong_checkpoint_is_refused(tmp_path):
    torch.save(_torchvision_reference("detect").state_dict(), tmp_path / "detect.pth")
    with pytest.raises(DetectorError, match="resnet18"):
        create_detector("detect", "resnet18", weights=str(tmp_path / "detect.pth"))


BACKBONE_LEVELS = [("resnet18", 5), ("vgg11", 1), ("efficientnet_lite0", 5), ("timm:resnet18", 5), ("lenet5", 1)]


@pytest.mark.parametrize(
    ("backbone", "fpn_levels", "task"),
    # VGG-11 carries the box head only: with the keypoint head (its 512-channel map through eight 1024-channel
    # convolutions per RoI) it took 15 s of the suite, with the mask head 4 s; LeNet-5 takes the same single-level
    # path to those heads
    [(b, n, t) for t in ("detect", "segment", "pose") for b, n in BACKBONE_LEVELS if b != "vgg11" or t == "detect"],
)
def test_every_backbone_carries_every_head(backbone, fpn_levels, task):
    model = create_detector(task, backbone, num_classes=3, num_keypoints=4, backbone_weights=None, **SMALL)
    assert (model.backbone.fpn is not None) == (fpn_levels > 1)
    torch.manual_seed(0)
    images = [torch.rand(3, 100, 120), torch.rand(3, 90, 110)]
    target = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
    if task == "segment":
        target["masks"] = torch.zeros(1, 100, 120, dtype=torch.uint8)
        target["masks"][0, 12:70, 10:60] = 1
    if task == "pose":
        target["keypoints"] = torch.tensor([[[20.0, 20.0, 2], [40.0, 30.0, 2], [30.0, 50.0, 2], [0.0, 0.0, 0]]])
    targets = [target, {k: v[:0] for k, v in target.items()}]  # the second image has no objects
    if task == "segment":
        targets[1]["masks"] = torch.zeros(0, 90, 110, dtype=torch.uint8)
    model.train()
    losses = model(images, targets)
    expected = {"detect": "loss_classifier", "segment": "loss_mask", "pose": "loss_keypoint"}[task]
    assert expected in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.detections_per_img = 8  # random heads keep up to 100 boxes, each through the mask/keypoint head
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert len(features) == fpn_levels
    assert {f.shape[1] for f in features.values()} == {model.backbone.out_channels}


def test_trainable_stages_and_frozen_batchnorm():
    from torchvision.ops.misc import FrozenBatchNorm2d

    pretrained = create_detector("detect", "resnet18", backbone_weights=None, weights=None, trainable_stages=2, **SMALL)
    trunk = pretrained.backbone.body
    trains = [any(p.requires_grad for p in trunk.body[s].parameters()) for s in ("C2", "C3", "C4", "C5")]
    assert trains == [False, False, True, True]
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules())  # random trunk: batch norm trains
    with pytest.raises(DetectorError, match=r"0\.\.4"):
        create_detector("detect", "resnet18", backbone_weights=None, trainable_stages=5, **SMALL)


def test_pretrained_trunk_gets_frozen_batchnorm_and_its_normalisation():
    from timm.layers import FrozenBatchNormAct2d

    model = create_detector("segment", "efficientnet_lite0", num_classes=4, **SMALL)  # bundled ImageNet weights
    assert model.spec.frozen_bn and model.spec.image_mean == [0.5, 0.5, 0.5]
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in model.modules())
    assert list(model.transform.image_mean) == [0.5, 0.5, 0.5]


def test_model_file_round_trip_keeps_outputs(tmp_path):
    model = create_detector(
        "pose", "efficientnet_lite0", num_classes=2, keypoint_names=["left_hand", "right_hand", "head"],
        box_score_thresh=0.0, **SMALL,
    ).eval()  # fmt: skip
    save_detector(tmp_path / "pose.safetensors", model)
    loaded = load_detector(tmp_path / "pose.safetensors")
    assert loaded.spec == model.spec and loaded.spec.flip_index == [1, 0, 2]
    image = torch.rand(3, 100, 100)
    with torch.no_grad():
        a, b = model([image])[0], loaded([image])[0]
    assert len(a["boxes"]) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_classifier_file_is_not_a_detector(trained):
    from cnnapps.errors import CnnappsError

    run, _ = trained
    with pytest.raises(CnnappsError, match="classify model, not a detector"):
        load_detector(run / "model.safetensors")


def test_bad_arguments():
    with pytest.raises(DetectorError, match="task 'track'"):
        create_detector("track", "resnet18")
    with pytest.raises(DetectorError, match="no COCO weights for segment on resnet18"):
        create_detector("segment", "resnet18", weights="coco")
    with pytest.raises(DetectorError, match="2 class names for 3 classes"):
        create_detector("detect", "resnet18", num_classes=3, class_names=["bg", "a"], backbone_weights=None)


def test_coco_model_fine_tunes_on_other_labels(monkeypatch):
    """``weights="coco"`` with other classes keeps the COCO trunk, RPN and heads; predictors are new."""
    from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights

    import cnnapps.apps.detect.model as model_module

    reference = _torchvision_reference("pose")
    meta = dict(KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.meta)
    monkeypatch.setattr(model_module, "_coco_checkpoint", lambda name: (reference.state_dict(), meta))
    names = ["left_hand", "right_hand", "head"]
    model = create_detector("pose", "resnet50", weights="coco", num_classes=3, class_names=["bg", "a", "b"],
                            keypoint_names=names)  # fmt: skip
    assert model.spec.class_names == ["bg", "a", "b"] and model.spec.keypoint_names == names
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 3
    assert torch.equal(model.rpn.head.conv[0][0].weight, reference.rpn.head.conv[0][0].weight)
    assert torch.equal(model.backbone.fpn.inner_blocks[0][0].weight, reference.backbone.fpn.inner_blocks[0][0].weight)
    assert model.spec.bn_eps == 0.0


def test_checkpoint_with_batchnorm_step_counters_loads(tmp_path):
    """torchvision's Mask R-CNN built with no pretrained weights has plain batch norm, whose state carries
    ``num_batches_tracked`` (318 trunk tensors for our 265): it loads and gives identical outputs; checkpoints
    that do not fit are still refused in one line."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    size = {"min_size": 96, "max_size": 128, "box_score_thresh": 0.0}
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **size).eval()
    state = reference.state_dict()
    assert sum(k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in state) == 53
    torch.save(state, tmp_path / "scratch.pth")
    ours = create_detector("segment", "resnet50", weights=str(tmp_path / "scratch.pth"), backbone_weights=None,
                           **size).eval()  # fmt: skip
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference([image])[0], ours([image])[0]
    assert len(expected["boxes"]) > 0
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    with pytest.raises(DetectorError, match=r"its backbone has 265 tensors, this detector's \d+ \(resnet18"):
        create_detector("segment", "resnet18", weights=str(tmp_path / "scratch.pth"), backbone_weights=None)
    state["backbone.body.layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(DetectorError, match=r"layer1\.0\.conv1\.weight has shape \(32, 64, 1, 1\)") as refusal:
        create_detector("segment", "resnet50", weights=str(tmp_path / "narrow.pth"), backbone_weights=None, **size)
    assert "\n" not in str(refusal.value)
    with pytest.raises(DetectorError, match=r"cls_score\.weight has shape \(91, 1024\), this detector needs \(3,"):
        create_detector("segment", "resnet50", num_classes=3, weights=str(tmp_path / "scratch.pth"),
                        backbone_weights=None, **size)  # fmt: skip


def test_checkpoint_without_step_counters_loads_into_plain_batchnorm():
    """The other way round: a detector with plain batch norm takes a state without ``num_batches_tracked``
    (its own counters stay); every weight and statistic arrives."""
    from cnnapps.apps.detect.model import load_torchvision_state

    torch.manual_seed(0)
    source = create_detector("detect", "resnet18", num_classes=3, backbone_weights=None, **SMALL)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.num_batches_tracked.fill_(7)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = create_detector("detect", "resnet18", num_classes=3, backbone_weights=None, **SMALL)
    assert not target.spec.frozen_bn
    load_torchvision_state(target, state, "no-counters.pth")
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert {int(v) for k, v in loaded.items() if k.endswith("num_batches_tracked")} == {0}
    load_torchvision_state(target, source.state_dict(), "with-counters.pth")  # both sides have them: carried
    assert {int(v) for k, v in target.state_dict().items() if k.endswith("num_batches_tracked")} == {7}
