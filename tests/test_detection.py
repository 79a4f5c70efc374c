"""Detection: backbones as feature extractors, SSD/SSDLite against torchvision and the
papers, the YOLO and COCO readers on real coco128 files, COCO mAP, training, the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torchvision
from PIL import Image

import mobilenets
from mobilenets.cli import main
from mobilenets.cost import profile
from mobilenets.decouple import decouple
from mobilenets.detection.data import collate, detection_transforms, find_detection_data, read_yolo_labels
from mobilenets.detection.evaluate import coco_metrics
from mobilenets.errors import ConfigError, DataError
from mobilenets.models.features import available_features
from mobilenets.train import TrainConfig, train

from .conftest import TORCHVISION_V2_WEIGHTS

# -- backbones -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("mobilenet_v1", {}),
        ("mobilenet_v1", {"width_mult": 0.5}),
        ("mobilenet_v2", {}),
        ("mobilenet_v2", {"width_mult": 0.35}),
        ("mobilenet_v3_large", {}),
        ("mobilenet_v3_small", {"width_mult": 0.75}),
        ("vgg16", {"width_mult": 0.25}),
        ("resnet18", {}),
        ("mobilenet_v2", {"cifar": True}),
    ],
)
def test_feature_maps_have_the_channels_and_strides_feature_info_states(name, options):
    backbone = mobilenets.create_model(name, features_only=True, **options)
    side = 64 if options.get("cifar") else 224
    maps = backbone(torch.randn(2, 3, side, side))
    assert len(maps) == len(backbone.feature_info) >= 3
    for fmap, info in zip(maps, backbone.feature_info):
        assert fmap.shape == (2, info.channels, side // info.stride, side // info.stride), info
    strides = [f.stride for f in backbone.feature_info]
    assert strides == sorted(strides) and len(set(strides)) == len(strides)  # one map per stride by default
    assert strides[-1] == (8 if options.get("cifar") else 32)


def test_expansion_taps_are_the_ssdlite_maps():
    """V2 paper, section 6.2: the first SSDLite map is the expansion of layer 15 (576 channels,
    stride 16); torchvision's V3 SSDLite takes C4's expansion (672 channels)."""
    v2 = mobilenets.create_model("mobilenet_v2", features_only=True, out_indices=["14.expansion", -1])
    assert [(f.tap, f.channels, f.stride) for f in v2.feature_info] == [("14.expansion", 576, 16), ("18", 1280, 32)]
    v3 = mobilenets.create_model("mobilenet_v3_large", features_only=True, out_indices=["13.expansion"])
    assert [(f.channels, f.stride) for f in v3.feature_info] == [(672, 16)]
    # the tapped tensor is the block's own expansion output, and the last map the classifier's body
    classifier = mobilenets.create_model("mobilenet_v2").eval()
    v2 = mobilenets.create_model("mobilenet_v2", features_only=True, out_indices=["14.expansion", -1],
                                 weights=classifier.state_dict()).eval()  # fmt: skip
    x = torch.randn(1, 3, 224, 224)
    maps = v2(x)
    torch.testing.assert_close(maps[0], classifier.features[14].expand(classifier.features[:14](x)))
    torch.testing.assert_close(maps[1], classifier.features(x))


def test_expansion_tap_where_there_is_none_is_refused():
    with pytest.raises(ConfigError, match="no 1x1 expansion"):
        mobilenets.create_model("mobilenet_v1", features_only=True, out_indices=["5.expansion"])
    with pytest.raises(ConfigError, match="outside"):
        mobilenets.create_model("mobilenet_v2", features_only=True, out_indices=[40])
    with pytest.raises(ConfigError, match="features_only"):
        mobilenets.create_model("mobilenet_v2", out_indices=[3])


def test_torchvision_and_our_classifier_weights_load_into_a_backbone(shared_data):
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True))
    tv.eval()
    backbone = mobilenets.create_model(
        "mobilenet_v2", features_only=True, out_indices=[6, -1], weights=TORCHVISION_V2_WEIGHTS
    ).eval()
    x = torch.randn(1, 3, 160, 160)
    maps = backbone(x)
    torch.testing.assert_close(maps[0], tv.features[:7](x))
    torch.testing.assert_close(maps[1], tv.features(x))
    # ours: a classifier saved by the library, and the backbone's own file
    ours = mobilenets.create_model("mobilenet_v3_small", num_classes=10).eval()
    state = ours.state_dict()
    cut = mobilenets.create_model("mobilenet_v3_small", features_only=True, out_indices=[3], weights=state).eval()
    torch.testing.assert_close(cut(x)[0], ours.features[:4](x))


def test_backbone_saves_and_rebuilds_from_its_file(tmp_path):
    backbone = mobilenets.create_model("mobilenet_v2", width_mult=0.5, features_only=True, out_indices=["14.expansion"])
    mobilenets.save_weights(backbone, tmp_path / "b.safetensors")
    again = mobilenets.load_model(tmp_path / "b.safetensors")
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(again(x)[0], backbone.eval()(x)[0])
    assert [f.tap for f in again.feature_info] == ["14.expansion"]


def test_a_decoupled_network_is_a_backbone():
    vgg = mobilenets.create_model("vgg16", width_mult=0.25, num_classes=10, cifar=True)
    converted, _ = decouple(vgg, rank=2)
    taps = [f.tap for f in available_features(converted) if not f.expansion][-3:]
    backbone = mobilenets.models.features.FeatureExtractor(converted, taps)
    x = torch.randn(1, 3, 64, 64)
    maps = backbone.eval()(x)
    assert [m.shape[-1] for m in maps] == [64 // f.stride for f in backbone.feature_info]
    # the maps are the converted network's own intermediate tensors
    torch.testing.assert_close(maps[-1], converted.eval().features[: int(taps[-1]) + 1](x))


# -- detectors -------------------------------------------------------------------------


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        else:
            value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    return state


def test_ssdlite_v3_is_torchvisions_network():
    """Same parameters (3,440,060, torchvision's model card), same mult-adds (0.583 G), and
    torchvision's state dict gives the same detections on images of two sizes."""
    ours = mobilenets.create_model("ssdlite320_mobilenet_v3_large")
    theirs = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    assert sum(p.numel() for p in ours.parameters()) == 3_440_060
    assert profile(ours).mult_adds == 583_171_904
    state = _randomised(theirs)
    theirs.load_state_dict(state)
    mobilenets.load_weights(ours, state)
    ours.eval(), theirs.eval()
    images = [torch.rand(3, 320, 320), torch.rand(3, 240, 400)]
    for a, b in zip(ours(images), theirs(images)):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize(
    "name, mult_adds, params, params_tolerance",
    [
        # V1 paper, Table 13 (SSD300): 1.2B mult-adds, 6.8M parameters
        ("ssd_mobilenet_v1", 1.2e9, 6.8e6, 0.01),
        # V2 paper, Table 6 (SSDLite320): V1 1.3B / 5.1M, V2 0.8B / 4.3M. Our counts include
        # batch-norm scales and 91-way class convs; the papers' parameter counts are 3-5 % lower.
        ("ssdlite_mobilenet_v1", 1.3e9, 5.1e6, 0.05),
        ("ssdlite_mobilenet_v2", 0.8e9, 4.3e6, 0.05),
    ],
)
def test_detector_costs_match_the_papers(name, mult_adds, params, params_tolerance):
    cost = profile(mobilenets.create_model(name))
    assert cost.mult_adds == pytest.approx(mult_adds, rel=0.035)
    assert cost.params == pytest.approx(params, rel=params_tolerance)
    assert not cost.uncounted


def test_tf_api_anchors_three_boxes_in_the_lowest_layer():
    model = mobilenets.create_model("ssdlite_mobilenet_v2", width_mult=0.35)
    assert model.anchor_generator.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    # 20x20 map at 320: 3 boxes per cell there, 6 elsewhere; scale 0.1 of the image lowest
    anchors = model.anchor_generator(
        torchvision.models.detection.image_list.ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]),
        [torch.zeros(1, 1, s, s) for s in (20, 10, 5, 3, 2, 1)],
    )[0]
    assert len(anchors) == 3 * 400 + 6 * (100 + 25 + 9 + 4 + 1)
    # TF's create_ssd_anchors, reduce_boxes_in_lowest_layer: (0.1, 1:1), (0.2, 2:1), (0.2, 1:2) - the
    # layer's own scale (min_scale) at the two ratios, so they reach the next layer's 0.35
    side = 0.2 * 320
    expected = torch.tensor([[32.0, 32.0], [side * 2**0.5, side / 2**0.5], [side / 2**0.5, side * 2**0.5]])
    torch.testing.assert_close(anchors[:3, 2:] - anchors[:3, :2], expected)
    # the next map: its scale 0.35, one between it and 0.5, then ratios 2, 1/2, 3, 1/3
    second = anchors[1200:1206, 2:] - anchors[1200:1206, :2]
    torch.testing.assert_close(second[:2, 0], torch.tensor([0.35 * 320, (0.35 * 0.5) ** 0.5 * 320]))


def test_default_boxes_learn_objects_from_the_recipes_overlap(tmp_path, monkeypatch, shared_data):
    """A box is a positive for an object it overlaps by the threshold or more, and each object keeps
    its best box (SSD's matcher); coco-ssdlite trains at S3FD's 0.35 (docs/benchmarks.md, "One class"),
    --match-iou sets it."""
    from mobilenets.models.ssd import Detector
    from mobilenets.train.recipes import get_recipe

    model = mobilenets.create_model("ssdlite_mobilenet_v2", width_mult=0.35, num_classes=2)
    overlaps = torch.tensor([[0.4, 0.45, 0.2]])  # one object against three default boxes
    model.match_boxes_at(0.5)
    assert model.proposal_matcher(overlaps).tolist() == [-1, 0, -1]  # its best box only
    model.match_boxes_at(0.35)
    assert model.proposal_matcher(overlaps).tolist() == [0, 0, -1]
    assert get_recipe("coco-ssdlite").match_iou == get_recipe("coco-ssd").match_iou == 0.35

    used = []
    monkeypatch.setattr(Detector, "match_boxes_at", lambda self, iou, min_boxes: used.append((iou, min_boxes)))
    root = _yolo_dataset(tmp_path / "squares", images=4)
    for out, iou, min_boxes in (("default", None, None), ("given", 0.6, 3)):
        config = TrainConfig(model="ssdlite_mobilenet_v2", data_dir=str(root), out=str(tmp_path / out), resolution=96,
                             width_mult=0.35, batch_size=4, workers=0, match_iou=iou, match_min_boxes=min_boxes)  # fmt: skip
        train(config, progress=False, log=lambda *_: None, stop_after_steps=1)
    assert used == [(0.35, get_recipe("coco-ssdlite").match_min_boxes), (0.6, 3)]


def test_objects_between_box_sizes_take_their_best_boxes_down_to_a_tenth(tmp_path):
    """S3FD's second step: an object left with fewer than N boxes takes its N best among those it
    overlaps by 0.1 or more and overlaps most; boxes another object was given stay its."""
    from mobilenets.models.ssd import ScaleCompensatingMatcher

    overlaps = torch.tensor([
        [0.80, 0.60, 0.50, 0.00, 0.00, 0.00, 0.00],  # a large object: three boxes at 0.35
        [0.00, 0.00, 0.00, 0.20, 0.15, 0.12, 0.05],  # a small one: its best box only
        [0.00, 0.00, 0.12, 0.00, 0.30, 0.00, 0.09],  # one overlapping the others' boxes
    ])  # fmt: skip
    assert ScaleCompensatingMatcher(0.35, 0)(overlaps).tolist() == [0, 0, 0, 1, 2, -1, -1]
    matches = ScaleCompensatingMatcher(0.35, 3)(overlaps).tolist()
    # the small object adds its next two above 0.1 (box 4 is the third object's best, box 6 under
    # 0.1); the third object's other boxes are nearer other objects or under the floor
    assert matches == [0, 0, 0, 1, 2, 1, -1]
    assert ScaleCompensatingMatcher(0.35, 2)(overlaps[:2]).tolist() == [0, 0, 0, 1, 1, -1, -1]


def test_detectors_profile_from_the_command_line(capsys):
    assert main(["profile", "ssd_mobilenet_v1", "--by-type"]) == 0
    out = capsys.readouterr().out
    assert "1x1 conv" in out and "depthwise conv" in out
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "object detection" in listing and "ssdlite_mobilenet_v2" in listing.split("object detection")[1]


# -- data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco128(shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = find_detection_data(
            shared_data / "coco128",
            val_transforms=detection_transforms("ssdlite", 320, train=False, fill=(0.5, 0.5, 0.5)),
        )
    return data, [str(w.message) for w in caught]


def test_yolo_reader_on_coco128(coco128, shared_data):
    data, messages = coco128
    assert data.layout == "yolo" and len(data.classes) == 81 and data.classes[1] == "person"
    assert len(data.train) == 128 and len(data.val) == 128
    # coco128 ships two images without labels and two labels without images: both are said
    assert any("2 of 128 images have no label file" in m for m in messages)
    assert any("000000000656.txt" in m for m in messages)
    image, target = data.val[0]
    label_file = shared_data / "coco128/object_detection/labels/val2017" / f"{data.val.files[0].stem}.txt"
    lines = [line.split() for line in label_file.read_text().splitlines() if line.strip()]
    assert len(target["boxes"]) == len(lines)
    height, width = image.shape[-2:]
    cls, cx, cy, w, h = lines[0]
    expected = [(float(cx) - float(w) / 2) * width, (float(cy) - float(h) / 2) * height]
    torch.testing.assert_close(target["boxes"][0, :2].as_subclass(torch.Tensor), torch.tensor(expected))
    assert target["labels"][0] == int(cls) + 1
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0


def test_training_augmentation_moves_boxes_with_the_image(coco128, shared_data):
    data, _ = coco128
    augment = detection_transforms("ssd", 320, train=True, fill=(0.485, 0.456, 0.406))
    torch.manual_seed(3)
    dataset = data.val.__class__(data.val.files[0].parent, shared_data / "coco128/object_detection/labels/val2017",
                                 data.classes[1:], augment)  # fmt: skip
    image, target = dataset[0]
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert image.shape == (3, 320, 320) and len(boxes) > 0
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 320


def test_coco_json_reader(tmp_path):
    for split in ("train2017", "val2017"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (64, 48), "white").save(tmp_path / split / "a.jpg")
    (tmp_path / "annotations").mkdir()
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 48, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [4, 6, 20, 10], "area": 200, "iscrowd": 0}
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    for split in ("train2017", "val2017"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    data = find_detection_data(tmp_path, val_transforms=detection_transforms("ssdlite", 64, train=False, fill=(0,)))
    assert data.layout == "coco" and len(data.classes) == 19 and data.classes[18] == "dog"
    image, target = data.val[0]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[4.0, 6.0, 24.0, 16.0]]))
    assert target["labels"].tolist() == [18]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", "expected 'class cx cy w h'"),
        ("dog 0.5 0.5 0.2 0.2", "integer class"),
        ("3 0.5 0.5 0.2 0.2", "class 3 is outside the 2 classes"),
        ("1 0.5 0.5 0 0.2", "no area"),
        ("1 0.95 0.5 0.2 0.2", "leaves the image"),
    ],
)
def test_bad_label_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "a.txt"
    path.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError, match=message) as caught:
        read_yolo_labels(path, 2, 100, 100)
    assert f"{path}, line 2" in str(caught.value)


def _yolo_dataset(root, *, images=6, size=96):
    """A small YOLO set: one bright square per image on a dark background, its box labelled."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: square\n  1: bar\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(images):
            picture = Image.new("RGB", (size, size), (20, 20, 20))
            x, y, side = 8 + 9 * i % 40, 10 + 7 * i % 40, 28 + i % 3 * 8
            picture.paste((250, 240, 40), (x, y, x + side, y + side))
            picture.save(root / "images" / split / f"{i}.jpg")
            cx, cy = (x + side / 2) / size, (y + side / 2) / size
            (root / "labels" / split / f"{i}.txt").write_text(f"0 {cx} {cy} {side / size} {side / size}\n")
    return root


def test_dataset_problems_are_one_line_errors(tmp_path, capsys):
    root = _yolo_dataset(tmp_path / "d", images=2)
    (root / "labels" / "train" / "1.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    code = main(["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "1.txt, line 2: class 5 is outside the 2 classes" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    (root / "labels" / "train" / "1.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    for image in (root / "images" / "val").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="holds no images"):
        find_detection_data(root)
    with pytest.raises(DataError, match="no detection dataset"):
        find_detection_data(tmp_path)


def test_background_images_are_valid(tmp_path):
    root = _yolo_dataset(tmp_path, images=3)
    (root / "labels" / "train" / "2.txt").unlink()
    with pytest.warns(UserWarning, match="1 of 3 images have no label file"):
        data = find_detection_data(root)
    assert len(data.train.targets[2][0]) == 0


# -- evaluation --------------------------------------------------------------------------


def test_coco_map_of_perfect_and_of_poor_predictions():
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [100.0, 40.0, 180.0, 90.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 5.0, 200.0, 150.0]]), "labels": torch.tensor([2])},
    ]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    metrics = coco_metrics(targets, perfect, num_classes=4)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    # boxes shifted to IoU ~0.6: found at IoU 0.5, lost at the stricter thresholds
    shifted = [{**p, "boxes": p["boxes"] + torch.tensor([8.0, 0.0, 8.0, 0.0]) * (p["boxes"][:, 2:3] -
                                                                               p["boxes"][:, 0:1]) / 32}
               for p in perfect]  # fmt: skip
    metrics = coco_metrics(targets, shifted, num_classes=4)
    assert metrics["map50"] == pytest.approx(1.0) and 0.2 < metrics["map"] < 0.8
    wrong_class = [{**p, "labels": p["labels"] % 3 + 1} for p in perfect]
    assert coco_metrics(targets, wrong_class, num_classes=4)["map"] == pytest.approx(0.0)



@pytest.mark.parametrize(("box", "expected"), [
    ((10.0, 5.0, 30.0, 25.0), [((10.0, 5.0, 30.0, 25.0), 0.8), ((70.0, 5.0, 90.0, 25.0), 0.2)]),
    ((40.0, 5.0, 60.0, 25.0), [((40.0, 5.0, 60.0, 25.0), 0.8)]),  # its own mirror image: suppressed to one
])  # fmt: skip
def test_flip_pools_both_passes_boxes_before_one_suppression(box, expected):
    """--test-flip on a detector: the mirror pass's boxes turned back into the image's pixels, pooled
    with the plain pass's and suppressed once with the detector's own NMS and cap - both off during
    the two passes (each pass keeps every candidate) and restored after."""
    from mobilenets.detection.evaluate import detect_with_views

    class Stub:  # one box at a fixed place in whatever image it gets, scored by the brightness of its left half
        nms_thresh, detections_per_img, settings_seen = 0.45, 2, []

        def __call__(self, images):
            self.settings_seen.append((self.nms_thresh, self.detections_per_img))
            return [{"boxes": torch.tensor([box]), "scores": image[:, :, :50].mean()[None],
                     "labels": torch.tensor([1])} for image in images]  # fmt: skip

    image = torch.full((3, 40, 100), 0.2)
    image[:, :, :50] = 0.8  # the mirror image's left half is dark: its box scores 0.2
    stub = Stub()
    (found,) = detect_with_views(stub, [image], flip=True)
    assert [(tuple(b), round(float(s), 4)) for b, s in zip(found["boxes"].tolist(), found["scores"])] == expected
    assert found["labels"].tolist() == [1] * len(expected)
    assert stub.settings_seen == [(1.0, 1_000_000)] * 2 and (stub.nms_thresh, stub.detections_per_img) == (0.45, 2)


def test_views_vote_at_their_own_iou_when_given_one():
    """detect_with_views' vote_iou: the kept box is averaged with the boxes overlapping it by more than
    vote_iou instead of the NMS's own IoU - its mirror image's copy (IoU 0.83) votes at the NMS's 0.45, and
    not at 0.9."""
    from mobilenets.detection.evaluate import detect_with_views

    class Stub:  # the same box in every view, scored by the brightness of the view's left half
        nms_thresh, detections_per_img = 0.45, 10

        def __call__(self, images):
            return [{"boxes": torch.tensor([[40.0, 5, 62, 25]]), "scores": image[:, :, :50].mean()[None],
                     "labels": torch.tensor([1])} for image in images]  # fmt: skip

    image = torch.full((3, 40, 100), 0.2)
    image[:, :, :50] = 0.8  # the mirror view's copy, turned back to 38-60, scores 0.2
    (at_nms,) = detect_with_views(Stub(), [image], flip=True)
    assert at_nms["boxes"].tolist() == [pytest.approx([0.8 * 40 + 0.2 * 38, 5, 0.8 * 62 + 0.2 * 60, 25])]
    (strict,) = detect_with_views(Stub(), [image], flip=True, vote_iou=0.9)
    assert strict["boxes"].tolist() == [[40.0, 5, 62, 25]]
    assert strict["scores"].tolist() == at_nms["scores"].tolist() == [pytest.approx(0.8)]


def test_tiles_add_the_small_boxes_found_in_the_corner_tiles():
    """--test-tiles on a detector: each corner tile (0.6 of the sides) is run too; its boxes come back
    shifted into the image's pixels, those over 0.4 of the image's sides or reaching a side the tile
    shares with another tile are dropped, and all are suppressed once with the detector's own NMS."""
    from mobilenets.detection.evaluate import CORNER_TILES, detect_with_views

    class Stub:  # in a 100 x 100 view (the image): one large box; in a 60 x 60 tile: a small box and a cut one
        nms_thresh, detections_per_img, calls = 0.45, 100, []

        def __call__(self, images):
            self.calls.append([tuple(image.shape[-2:]) for image in images])
            return [self.found(image) for image in images]

        def found(self, image):
            if image.shape[-1] == 100:
                return {"boxes": torch.tensor([[10.0, 10, 90, 90]]), "scores": torch.tensor([0.9]),
                        "labels": torch.tensor([1])}  # fmt: skip
            small, cut, large = [20.0, 20, 30, 30], [50.0, 5, 60, 15], [5.0, 5, 50, 50]
            return {"boxes": torch.tensor([small, cut, large]), "scores": torch.full((3,), 0.5),
                    "labels": torch.tensor([1, 1, 1])}  # fmt: skip

    image = torch.rand(3, 100, 100)
    stub = Stub()
    (found,) = detect_with_views(stub, [image], tiles=CORNER_TILES)
    assert stub.calls == [[(100, 100)], [(60, 60)], [(60, 60)], [(60, 60)], [(60, 60)]]
    kept = sorted(tuple(box) for box in found["boxes"].tolist())
    # the small box of each tile, shifted by the tile's corner (0 or 40); the cut one only where its right
    # side is the image's (the right-hand tiles: 50-60 of a tile starting at 40 -> 90-100); the large
    # one (45 px > 40) never
    small = [(20.0 + x, 20.0 + y, 30.0 + x, 30.0 + y) for y in (0, 40) for x in (0, 40)]
    cut = [(90.0, 5.0 + y, 100.0, 15.0 + y) for y in (0, 40)]
    assert kept == sorted([(10.0, 10.0, 90.0, 90.0), *small, *cut])
    assert (stub.nms_thresh, stub.detections_per_img) == (0.45, 100)
    # with the mirror image as well: each view twice, the mirrored boxes turned back inside their tile
    stub.calls.clear()
    (both,) = detect_with_views(stub, [image], flip=True, tiles=CORNER_TILES)
    assert sorted(stub.calls) == [[(60, 60)]] * 8 + [[(100, 100)]] * 2
    assert (10.0, 10.0, 90.0, 90.0) in [tuple(box) for box in both["boxes"].tolist()]
    assert (30.0, 20.0, 40.0, 30.0) in [tuple(box) for box in both["boxes"].tolist()]  # 60 - 30, 60 - 20
    # on a CPU each view is its own pass, however many images come together (a batch of large views maps
    # fresh memory on every pass); each image still gets its own views' boxes
    stub.calls.clear()
    first, second = detect_with_views(stub, [image, image], tiles=CORNER_TILES)
    assert stub.calls == [[(100, 100)], *[[(60, 60)]] * 4] * 2
    assert first["boxes"].tolist() == second["boxes"].tolist() == found["boxes"].tolist()


def test_a_level_of_tiles_runs_edge_to_edge_and_keeps_the_whole_small_boxes():
    """TileLevel: a 3x3 grid of tiles 0.4 of the sides runs edge to edge; a tile keeps a box under its
    ``keeps_under`` of the image's sides and clear of the sides it shares with a neighbour; one tile per
    side, or a side over the image's, is refused in one line."""
    from mobilenets.detection.evaluate import CORNER_TILES, TileLevel
    from mobilenets.errors import ConfigError

    assert CORNER_TILES[0].tiles(100, 200) == [(top, left, 60, 120) for top in (0, 40) for left in (0, 80)]
    level = TileLevel(per_side=3, side=0.4, keeps_under=0.4 * 2 / 3)  # boxes under 53.3 x 26.7 px kept
    tiles = level.tiles(100, 200)
    assert tiles == [(top, left, 40, 80) for top in (0, 30, 60) for left in (0, 60, 120)]
    small, at_left, wide, at_bottom_right = [3.0, 3, 10, 10], [0, 5, 10, 15], [5, 5, 60, 30], [70, 30, 79, 38]
    boxes = torch.tensor([small, at_left, wide, at_bottom_right])
    # the middle tile shares all four sides; the top-left one has the image's left and top sides, the
    # bottom-right one its right and bottom sides; the 55-px box is too wide everywhere
    assert level.keep(boxes, tiles[4], 100, 200).tolist() == [True, False, False, False]
    assert level.keep(boxes, tiles[0], 100, 200).tolist() == [True, True, False, False]
    assert level.keep(boxes, tiles[8], 100, 200).tolist() == [True, False, False, True]
    with pytest.raises(ConfigError, match=r"^TileLevel: per_side must be an integer >= 2, got 1$"):
        TileLevel(per_side=1, side=0.6, keeps_under=0.4)
    with pytest.raises(ConfigError, match=r"^TileLevel: side must be in \(0, 1\], got 1.5$"):
        TileLevel(per_side=2, side=1.5, keeps_under=0.4)
    # the bool the option once took is refused in one line, not deep inside the loop over levels
    from mobilenets.detection.evaluate import detect_with_views

    with pytest.raises(ConfigError, match=r"^tiles takes levels of tiles \(TileLevel; .*got True$"):
        detect_with_views(lambda images: [], [torch.rand(3, 8, 8)], tiles=True)
    with pytest.raises(ConfigError, match=r"^vote_iou must be in \(0, 1\], got 1.5$"):
        detect_with_views(lambda images: [], [torch.rand(3, 8, 8)], vote_iou=1.5)


def test_box_voting_averages_each_kept_box_with_those_it_suppressed():
    """Box voting: NMS keeps A, H, C (and D of the other class); A becomes the score-weighted mean of
    itself, B and E - E overlaps both A and H above the threshold and votes for the better, A, which
    suppressed it - while D, on A's very place, is another class's and votes for nothing of A's."""
    from torchvision.ops import batched_nms

    from mobilenets.detection.evaluate import voted_boxes

    a, h, b, e, c, d = [0.0, 0, 10, 10], [6.0, 0, 16, 10], [1.0, 0, 11, 10], [3.0, 0, 13, 10], [50.0, 50, 60, 60], \
        [0.0, 0, 10, 10]  # fmt: skip
    boxes = torch.tensor([a, h, b, e, c, d])
    scores = torch.tensor([0.9, 0.7, 0.6, 0.4, 0.5, 0.8])
    labels = torch.tensor([1, 1, 1, 1, 1, 2])
    kept = batched_nms(boxes, scores, labels, 0.45)
    assert kept.tolist() == [0, 5, 1, 4]
    voted = voted_boxes(boxes, scores, labels, kept, 0.45)
    mean_a = (0.9 * torch.tensor(a) + 0.6 * torch.tensor(b) + 0.4 * torch.tensor(e)) / 1.9
    torch.testing.assert_close(voted, torch.stack([mean_a, torch.tensor(d), torch.tensor(h), torch.tensor(c)]))
    # at IoU 1 nothing is suppressed, so nothing votes: every box stays itself (no kept box loses its own vote)
    everything = batched_nms(boxes, scores, labels, 1.0)
    assert torch.equal(voted_boxes(boxes, scores, labels, everything, 1.0), boxes[everything])
    # through detect_with_views: an image's box and its mirror image's (IoU 0.67) become their mean
    # weighted by their scores, 0.8 and 0.2; without voting the better one stays as it is
    from mobilenets.detection.evaluate import detect_with_views

    class Stub:
        nms_thresh, detections_per_img = 0.45, 10

        def __call__(self, images):
            return [{"boxes": torch.tensor([[38.0, 5, 58, 25]]), "scores": image[:, :, :50].mean()[None],
                     "labels": torch.tensor([1])} for image in images]  # fmt: skip

    image = torch.full((3, 40, 100), 0.2)
    image[:, :, :50] = 0.8
    (voting,) = detect_with_views(Stub(), [image], flip=True)
    (plain,) = detect_with_views(Stub(), [image], flip=True, vote=False)
    torch.testing.assert_close(voting["boxes"], torch.tensor([[38.8, 5.0, 58.8, 25.0]]))
    assert plain["boxes"].tolist() == [[38.0, 5.0, 58.0, 25.0]]
    assert voting["scores"].tolist() == plain["scores"].tolist() == pytest.approx([0.8])


# -- training, evaluation and prediction end to end -------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """SSDLite from the ImageNet backbone trained for a few epochs on generated squares; and
    the same run interrupted after 5 steps and resumed."""
    root = _yolo_dataset(tmp_path_factory.mktemp("squares"), images=8)
    # Validated every 3rd epoch: validations (batch norms re-estimated first) were half the fixture's time.
    common = dict(model="ssdlite_mobilenet_v2", data_dir=str(root), recipe="coco-ssdlite", resolution=128,
                  epochs=6, batch_size=4, workers=0, eval_every=3, init_from=str(TORCHVISION_V2_WEIGHTS))  # fmt: skip
    out = tmp_path_factory.mktemp("run")
    summary = train(TrainConfig(out=str(out / "a"), **common), progress=False, log=lambda *_: None)
    assert train(TrainConfig(out=str(out / "b"), **common), progress=False, log=lambda *_: None,
                 stop_after_steps=5) is None  # fmt: skip
    train(TrainConfig(out=str(out / "b"), **common), progress=False, log=lambda *_: None)
    return root, out, summary


def test_detector_training_loss_falls_and_map_is_measured(trained):
    _, out, summary = trained
    history = [json.loads(line) for line in (out / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 6
    # (augmented batches of 4 are noisy; measured 9.6 -> 6.7 over these six epochs)
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    validated = [h for h in history if "map" in h]
    assert [h["epoch"] for h in validated] == [3, 6]
    assert all(0.0 <= h["map"] <= 1.0 and "map50" in h for h in validated)
    assert summary["best_map"] == max(h["map"] for h in validated)
    assert summary["params"] > 0 and summary["mult_adds"] > 0


def test_detector_training_resumes_exactly(trained):
    _, out, _ = trained
    a = torch.load(out / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(out / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_eval_and_predict_a_detector_from_the_command_line(trained, capsys, tmp_path):
    root, out, _ = trained
    assert main(["eval", "--checkpoint", str(out / "a" / "best.pt"), "--data-dir", str(root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"map", "map50", "map75", "images"} <= set(metrics) and metrics["images"] == 8
    image = str(root / "images" / "val" / "0.jpg")
    code = main(["predict", "--checkpoint", str(out / "a" / "best.pt"), image, "--out", str(tmp_path / "drawn"),
                 "--threshold", "0.0", "--json"])  # fmt: skip
    found = json.loads(capsys.readouterr().out)
    assert code == 0 and found[0]["image"] == image and found[0]["boxes"]
    assert {"label", "score", "box"} <= set(found[0]["boxes"][0]) and found[0]["boxes"][0]["label"] in ("square", "bar")
    drawn = Image.open(tmp_path / "drawn" / "0.png")
    assert drawn.size == (96, 96)
    assert drawn.convert("RGB").tobytes() != Image.open(image).convert("RGB").tobytes()  # boxes were drawn
    # --test-tiles: the boxes of the image and its tiles together, as detect_with_views finds them
    from torchvision.transforms.v2 import functional as TF

    from mobilenets.detection.evaluate import CORNER_TILES, detect_with_views

    assert main(["predict", "--checkpoint", str(out / "a" / "best.pt"), image, "--threshold", "0.0", "--json",
                 "--test-tiles"]) == 0  # fmt: skip
    tiled = json.loads(capsys.readouterr().out)[0]["boxes"]
    model = mobilenets.load_model(out / "a" / "best.pt").eval()
    pixels = TF.to_dtype(TF.pil_to_tensor(Image.open(image).convert("RGB")), torch.float32, scale=True)
    (expected,) = detect_with_views(model, [pixels], tiles=CORNER_TILES)
    assert [box["score"] for box in tiled] == [round(s, 4) for s in expected["scores"].tolist()]
    # the tiles' own boxes beside the image's (the best of them here found in a tile)
    assert {tuple(box["box"]) for box in tiled} - {tuple(box["box"]) for box in found[0]["boxes"]}
    # --test-flip (with the tiles: each view mirrored too), as eval --test-flip --test-tiles scores
    assert main(["predict", "--checkpoint", str(out / "a" / "best.pt"), image, "--threshold", "0.0", "--json",
                 "--test-tiles", "--test-flip"]) == 0  # fmt: skip
    mirrored = json.loads(capsys.readouterr().out)[0]["boxes"]
    (expected,) = detect_with_views(model, [pixels], flip=True, tiles=CORNER_TILES)
    assert [box["score"] for box in mirrored] == [round(s, 4) for s in expected["scores"].tolist()]
    assert [box["box"] for box in mirrored] == [[round(v, 1) for v in b] for b in expected["boxes"].tolist()]
    assert mirrored != tiled


def test_eval_test_flip_and_tiles_score_a_detector_on_those_views(trained, monkeypatch, capsys):
    import mobilenets.detection.evaluate as detection_evaluate

    root, out, _ = trained
    calls, pooled = [], detection_evaluate.detect_with_views
    def counted(model, images, **views):
        calls.append((len(images), views))
        return pooled(model, images, **views)

    monkeypatch.setattr(detection_evaluate, "detect_with_views", counted)
    checkpoint = ["eval", "--checkpoint", str(out / "a" / "best.pt"), "--data-dir", str(root), "--json"]
    assert main(checkpoint) == 0 and not calls
    plain = json.loads(capsys.readouterr().out)
    corners = detection_evaluate.CORNER_TILES
    for given, views in ((["--test-flip"], {"flip": True, "tiles": (), "vote": True}),
                         (["--test-tiles"], {"flip": False, "tiles": corners, "vote": True}),
                         (["--test-flip", "--test-tiles"], {"flip": True, "tiles": corners, "vote": True}),
                         (["--test-tiles", "--test-merge", "nms"], {"flip": False, "tiles": corners,
                                                                    "vote": False})):  # fmt: skip
        calls.clear()
        assert main([*checkpoint, *given]) == 0
        assert sum(n for n, _ in calls) == plain["images"] == 8 and all(v == views for _, v in calls)
        assert json.loads(capsys.readouterr().out)["images"] == 8
    # one view has nothing to merge
    assert main([*checkpoint, "--test-merge", "nms"]) == 2
    assert "--test-merge nms merges the boxes of several views" in capsys.readouterr().err


def test_eval_resolution_sets_the_side_a_detector_resizes_to(trained, monkeypatch, capsys):
    """A detector resizes its input itself, so --resolution beside a checkpoint rebuilds it at that
    side (it once changed only the data's transform, which leaves a detector's images as they are)."""
    import mobilenets.detection.evaluate as detection_evaluate

    root, out, _ = trained
    sides, score = [], detection_evaluate.evaluate_detector
    monkeypatch.setattr(detection_evaluate, "evaluate_detector",
                        lambda model, *a, **k: sides.append(model.transform.fixed_size) or score(model, *a, **k))  # fmt: skip
    for given in ([], ["--resolution", "96"]):
        assert main(["eval", "--checkpoint", str(out / "a" / "best.pt"), "--data-dir", str(root), *given]) == 0
    assert sides == [(128, 128), (96, 96)]
    capsys.readouterr()


def test_a_detector_starts_from_another_detector(trained, tmp_path):
    """--init-from a detector checkpoint loads everything; a classifier file, the backbone only."""
    root, out, _ = trained
    config = dict(model="ssdlite_mobilenet_v2", data_dir=str(root), recipe="coco-ssdlite", resolution=128,
                  epochs=1, batch_size=4, workers=0, train_subset=4, val_subset=2)  # fmt: skip
    logs: list[str] = []
    train(TrainConfig(out=str(tmp_path / "c"), init_from=str(out / "a" / "last.pt"), **config), progress=False,
          log=logs.append)  # fmt: skip
    assert any("started from the detector" in line for line in logs)


def test_collate_keeps_images_of_different_sizes():
    images, targets = collate([(torch.zeros(3, 10, 20), {"a": 1}), (torch.zeros(3, 30, 5), {"a": 2})])
    assert [tuple(i.shape) for i in images] == [(3, 10, 20), (3, 30, 5)] and targets == [{"a": 1}, {"a": 2}]


def _matching(ours: dict, theirs: dict) -> torch.Tensor:
    """For each of our detections, the index of the exported one nearest to it (box, score, label);
    asserted to be a one-to-one matching."""
    def rows(d):
        return torch.cat([d["boxes"].detach(), 1e3 * d["scores"].detach()[:, None], 1e6 * d["labels"][:, None]], 1)

    order = torch.cdist(rows(ours).double(), rows(theirs).double(), p=1).argmin(1)
    assert sorted(order.tolist()) == list(range(len(order)))
    return order


def test_export_scores_a_detector_by_map_and_auto_keeps_within_the_tolerance(trained, tmp_path, capsys):
    """--eval-data scores each form of a detector as `eval` does (COCO mAP on the validation split),
    and --format auto ranks its candidates by that score against the PyTorch model's."""
    pytest.importorskip("onnxruntime")
    root, out, _ = trained
    checkpoint, data = str(out / "a" / "best.pt"), str(root)
    assert main(["eval", "--checkpoint", checkpoint, "--data-dir", data, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["map"] > 0  # a score that can move
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "d.onnx"), "--eval-data", data]) == 0
    assert "pytorch    mAP " in capsys.readouterr().out
    accuracy = json.loads((tmp_path / "d.onnx.export.json").read_text())["accuracy"]
    assert accuracy["pytorch"] == {"map": scored["map"], "map50": scored["map50"]}
    assert accuracy["onnx_fp32"]["map"] == pytest.approx(scored["map"], abs=1e-3)
    argv = ["export", "--checkpoint", checkpoint, "--format", "auto", "--runtimes", "onnxruntime", "--out",
            str(tmp_path / "auto"), "--eval-data", data]  # fmt: skip
    assert main(argv) == 0
    assert "mAP %" in capsys.readouterr().out
    summary = json.loads((tmp_path / "auto.onnx.export.json").read_text())
    assert summary["scored_by"] == "mAP %" and summary["reference_accuracy"] == pytest.approx(100 * scored["map"])
    assert summary["candidates"][0]["accuracy"] == pytest.approx(100 * scored["map"], abs=0.1)
    missing = tmp_path / "missing"  # named as a folder, not as --data-dir (which export does not take)
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "e.onnx"), "--eval-data", str(missing)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"data directory not found: {missing}")


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_exports_give_the_pytorch_detections(trained, tmp_path, capsys, kind):
    """The exported graph (network + box decoding) with the detector's own NMS after it
    finds the same boxes, scores and labels as the PyTorch detector, in ONNX Runtime and OpenVINO."""
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino"}[kind])
    from mobilenets.detection.evaluate import CORNER_TILES, detect_with_views
    from mobilenets.runtimes import load_exported

    root, out, _ = trained
    path = tmp_path / ("det.onnx" if kind == "onnx" else "det.xml")
    assert main(["export", "--checkpoint", str(out / "a" / "best.pt"), "--out", str(path), "--format", kind]) == 0
    assert "relative error" in capsys.readouterr().out
    if kind == "onnx":  # the detection task's preprocessing record: the graph normalises its input itself
        from mobilenets.export.ort import read_metadata

        metadata = read_metadata(path)
        assert metadata["transforms"] == "detection" and "mean" not in metadata
        assert metadata["steps"].endswith("boxes scale back")
    model = mobilenets.load_model(out / "a" / "best.pt").eval()
    exported = load_exported(path)
    images = [detection_transforms("ssdlite", 128, train=False, fill=(0,))(Image.open(p).convert("RGB"))
              for p in sorted((root / "images" / "val").iterdir())[:2]]  # fmt: skip
    for ours, theirs in zip(model(images), exported(images)):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
        # the same detections; two whose scores tie to float precision may come in either order
        order = _matching(ours, theirs)
        # fp32 through ~60 layers summed in other orders by ORT's/OpenVINO's kernels and PyTorch's, then
        # scaled by anchors up to the image's side: 1.3e-3 px apart on these 96 px images on a Zen 4 host
        # (AVX-512; ORT and OpenVINO alike) where a fixed 1e-3 px held on the AVX2 hosts - a hundredth of a
        # pixel (1e-4 of the side) still catches any decoding or scale-back error, which moves boxes by pixels
        side = max(image.shape[-1] for image in images)
        torch.testing.assert_close(theirs["boxes"][order], ours["boxes"].detach(), atol=1e-4 * side, rtol=1e-4)
        # on a probability: up to 7.7e-5 apart here (the network's outputs 3.5e-6 relative to their largest)
        torch.testing.assert_close(theirs["scores"][order], ours["scores"].detach(), atol=2e-4, rtol=1e-4)
        assert torch.equal(theirs["labels"][order], ours["labels"])
    # test-time flip and tiles pool the candidates of both runtimes alike (an exported file keeps its NMS in
    # `settings`, and resizes a tile to its input as the PyTorch detector does)
    views = {"flip": True, "tiles": CORNER_TILES}
    for ours, theirs in zip(detect_with_views(model, images, **views), detect_with_views(exported, images, **views)):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
        order = _matching(ours, theirs)
        torch.testing.assert_close(theirs["boxes"][order], ours["boxes"].detach(), atol=1e-4 * side, rtol=1e-4)
    assert exported.settings["nms_thresh"] == model.nms_thresh  # restored
    image = str(root / "images" / "val" / "1.jpg")
    assert main(["predict", "--exported", str(path), image, "--threshold", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["boxes"]
    assert main(["export", "--checkpoint", str(out / "a" / "best.pt"), "--out", str(path), "--int8", "--format", kind]) == 2
    assert "int8" in capsys.readouterr().err
