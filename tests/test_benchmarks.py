"""The benchmark scripts' own logic (not their timings): what a GPU window's results are read back with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import background_cross_entropy, load_script, spy_on_detector_loss


def ablation(monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/cifar_ablation.py as its command line runs it, in this process (a fresh one spent
    7-10 s importing what the suite has imported already): its exit code, stdout and stderr."""
    script = load_script("cifar_ablation", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["cifar_ablation.py", *args])
    try:
        script.main()
        code = 0
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out, err)


def test_cifar_ablation_refuses_a_cell_of_another_grid(tmp_path, monkeypatch, capsys):
    result = ablation(monkeypatch, capsys, "--grid", "figure6", "--only", "relu-150", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "no cell relu-150 in the figure6 grid" in result.stderr and "no-shortcuts" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing trained


def test_cifar_ablation_report_tabulates_finished_runs_and_lists_the_rest(tmp_path, monkeypatch, capsys):
    run = tmp_path / "relu6-150-seed1"
    run.mkdir()
    summary = {"top1": 0.9212, "best_top1": 0.9301, "mult_adds": 87_980_000, "params": 2_236_682, "train_seconds": 600}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "top1": 0.9212}) + "\n")
    result = ablation(monkeypatch, capsys, "--grid", "figure6", "--seeds", "1", "--out", str(tmp_path), "--report")
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert "| 150 | 93.01 | 92.12 | 93.04 / 92.67 | 88.0M | 2.24M | 600 |" in rows["relu6-150"]
    assert "missing" in rows["no-shortcuts"] and "missing" in rows["nonlinear-bottleneck"]
    assert "missing (not finished under" in result.stdout and "no-shortcuts seed 1" in result.stdout
    assert (tmp_path / "figure6.png").is_file()


def test_bn_lag_scores_running_and_batch_statistics_and_restores_the_model():
    """benchmarks/bn_lag.py: eval mode uses the running statistics, the other pass each batch's
    own; stale running statistics show as a gap, and the model's buffers are left as they were."""
    import torch

    bn_lag = load_script("bn_lag")

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(1)

        def forward(self, x):
            return {"out": torch.cat([torch.zeros_like(x[:, :1]), self.norm(x[:, :1])], 1)}

    torch.manual_seed(0)
    images = torch.randn(4, 1, 8, 8) + 3.0  # mean 3: class 1 wherever the normalised value is positive
    masks = (images[:, 0] > 3.0).long()
    model = Segmenter()  # running mean 0, var 1: every pixel normalises to about +3, all class 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    running = bn_lag.score(model, [(images, masks)], 2, batch_statistics=False)
    own = bn_lag.score(model, [(images, masks)], 2, batch_statistics=True)
    assert own["pixel_acc"] > 0.99 and running["pixel_acc"] < 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_detection_errors_sorts_detections_by_what_they_overlap():
    """benchmarks/detection_errors.py: COCO's mAP50 rule for a found object, the first box on an
    object found and the next a duplicate; a part inside an object, a box off it, background."""
    import torch
    from torchvision.ops import box_iou

    errors = load_script("detection_errors")

    objects = torch.tensor([[0.0, 0.0, 100.0, 200.0]])
    detections = torch.tensor([
        [0.0, 10.0, 100.0, 200.0],  # IoU 0.95: found
        [5.0, 0.0, 100.0, 190.0],  # found again: a duplicate
        [10.0, 10.0, 60.0, 60.0],  # its head: inside, IoU 0.125
        [50.0, 100.0, 200.0, 300.0],  # mostly off it: IoU 0.11
        [300.0, 300.0, 400.0, 400.0],
    ])  # fmt: skip
    overlaps = box_iou(detections, objects)
    taken: set[int] = set()
    kinds = [errors.kind_of(d, objects, overlaps[i], taken) for i, d in enumerate(detections)]
    assert kinds == ["true positive", "duplicate", "inside", "misplaced", "background"]
    assert errors.kind_of(detections[0], torch.zeros(0, 4), torch.zeros(0), set()) == "background"
    # sides 20 (small), 50 (medium), 150 (large); best overlaps 0.6, 0.4, 0.0
    table = errors.recall_by_size([(20.0, 0.6), (50.0, 0.4), (150.0, 0.0), (150.0, 0.9)], 0.5)
    assert table == {"small": (1, 1.0), "medium": (1, 0.0), "large": (2, 0.5)}


def test_soft_nms_of_the_detection_eval_settings():
    """benchmarks/detection_eval_settings.py: Gaussian soft-NMS (Bodla et al. 2017) decays a box's score by
    exp(-IoU^2 / sigma) for each better box of its class it overlaps, instead of dropping it; other classes
    and boxes apart keep theirs; the decayed scores order the result and drop below the threshold."""
    import math

    import torch

    settings = load_script("detection_eval_settings")
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9.9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.02])
    labels = torch.tensor([1, 1, 2, 1, 1])
    keep, decayed = settings.soft_nms(boxes, scores, labels, sigma=0.5, threshold=0.01, kept=10)
    # box 1 overlaps box 0 by 0.5: 0.8 * exp(-0.25 / 0.5); box 2 is another class, box 3 apart; box 4
    # overlaps box 0 by 0.99 and falls under the threshold
    assert keep.tolist() == [0, 2, 3, 1]
    assert decayed.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.8 * math.exp(-0.5)])
    assert settings.soft_nms(boxes, scores, labels, sigma=0.5, threshold=0.01, kept=2)[0].tolist() == [0, 2]


def test_grid_level_of_the_detection_eval_settings():
    """benchmarks/detection_eval_settings.py --voting: the second level of tiles keeps a box under 2/3 of a
    grid tile's own sides, expressed as the library's TileLevel (a share of the image's sides)."""
    settings = load_script("detection_eval_settings")
    level = settings.grid_level(3, 0.4)
    assert (level.per_side, level.side, level.keeps_under) == (3, 0.4, pytest.approx(0.4 * 2 / 3))
    assert level.tiles(100, 200) == [(top, left, 40, 80) for top in (0, 30, 60) for left in (0, 60, 120)]


def test_default_box_counts_by_coco_size():
    """benchmarks/default_box_counts.py: an object counts the default boxes it overlaps by the matching IoU or
    more, its boxes taken as fractions of its image's sides, filed by COCO's size classes in the image's pixels;
    images without objects add nothing."""
    import torch

    counts = load_script("default_box_counts")
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]])
    # a 400 x 200 image (height x width): a box 100 px wide, 200 tall is its top-left quarter (IoU 1 and 0.5
    # with the first two anchors); a 20 x 20 px box overlaps nothing by 0.35
    boxes = torch.tensor([[0.0, 0.0, 100.0, 200.0], [150.0, 250.0, 170.0, 270.0]])
    targets = [(boxes, torch.tensor([1, 1]), (400, 200)), (torch.zeros(0, 4), torch.zeros(0), (10, 10))]
    assert counts.count_boxes(targets, anchors, 0.35) == [("small", [0]), ("medium", []), ("large", [2])]
    assert counts.count_boxes(targets, anchors, 0.6) == [("small", [0]), ("medium", []), ("large", [1])]
    taught = [(name, overlaps.tolist()) for name, overlaps in counts.object_boxes(targets, anchors, 0.35)]
    assert taught == [("large", pytest.approx([1.0, 0.5])), ("small", [])]


def test_focal_loss_of_the_detection_ablations():
    """benchmarks/detection_ablations.py --focal: at GAMMA 0 it is the cross entropy of every box,
    weighted ALPHA (objects) or 1 - ALPHA (background), over the boxes holding an object; GAMMA 2
    silences the boxes already right far more than the wrong ones; the background score it starts
    from gives each class 0.01."""
    import torch
    import torch.nn.functional as F

    ablations = load_script("detection_ablations")
    logits = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, 50, dtype=torch.long)
    labels[0, :4], labels[1, 10] = 1, 2
    each = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    objects = labels.flatten() > 0
    assert ablations.focal_classification_loss(logits, labels, 0.5, 0.0) == pytest.approx(0.5 * each.sum() / 5)
    # ALPHA weighs the boxes holding an object, 1 - ALPHA the background
    expected = (0.25 * each[objects].sum() + 0.75 * each[~objects].sum()) / 5
    assert ablations.focal_classification_loss(logits, labels, 0.25, 0.0) == pytest.approx(expected.item())
    sure = torch.tensor([[[8.0, -8.0], [-8.0, 8.0], [0.0, 0.0]]])  # right background, right object, a toss-up
    per_box = [ablations.focal_classification_loss(sure[:, i : i + 1], torch.tensor([[0, 1, 1][i]])[None], 0.5, 2.0)
               for i in range(3)]  # fmt: skip
    assert per_box[0] < 1e-6 * per_box[2] and per_box[1] < 1e-6 * per_box[2]
    for classes in (2, 5):
        scores = torch.zeros(classes)
        scores[0] = ablations.background_bias(classes)
        assert scores.softmax(0)[1:] == pytest.approx(torch.full((classes - 1,), 0.01))


def _atss_by_loops(boxes, anchors, level_sizes, per_location, k):
    """ATSS's assignment written out object by object and map by map, for the test below."""
    from torchvision.ops import box_iou

    iou = box_iou(boxes, anchors)
    best_iou, matched = [-1.0] * len(anchors), [-1] * len(anchors)
    for n, box in enumerate(boxes.tolist()):
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        candidates, start = [], 0
        for size, here in zip(level_sizes, per_location):
            def distance(i):
                x, y = (anchors[i, 0] + anchors[i, 2]) / 2, (anchors[i, 1] + anchors[i, 3]) / 2
                return float((x - centre[0]) ** 2 + (y - centre[1]) ** 2)

            candidates += sorted(range(start, start + size), key=distance)[: k * here]
            start += size
        values = [float(iou[n, i]) for i in candidates]
        mean = sum(values) / len(values)
        threshold = mean + (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        for i, value in zip(candidates, values):
            x, y = float(anchors[i, 0] + anchors[i, 2]) / 2, float(anchors[i, 1] + anchors[i, 3]) / 2
            if value >= threshold and box[0] < x < box[2] and box[1] < y < box[3] and value > best_iou[i]:
                best_iou[i], matched[i] = value, n
    for n in range(len(boxes)):
        matched[int(iou[n].argmax())] = n
    return matched


def test_atss_matching_of_the_detection_ablations():
    """benchmarks/detection_ablations.py --atss: each object learns the candidates (the boxes at the K positions
    of each map nearest its centre) overlapping it by the candidates' mean IoU plus their standard deviation and
    centred inside it, a box claimed twice going to the object it overlaps most, and its best box whatever the
    overlap - as a loop over objects and maps computes it; a small object learns boxes under SSD's 0.35, a large
    one fewer than it overlaps by 0.35."""
    import torch
    from torchvision.ops import box_iou

    ablations = load_script("detection_ablations")
    counts = load_script("default_box_counts")
    anchors, sizes, per_location = counts.default_boxes(128)  # maps of 4x4 ... 1x1 positions, 3 or 6 boxes each
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        corner = torch.rand(6, 2, generator=generator) * 0.7
        boxes = torch.cat([corner, corner + 0.05 + torch.rand(6, 2, generator=generator) * 0.25], 1)
        matched = ablations.atss_matches(boxes, anchors, sizes, per_location, k=2)
        assert matched.tolist() == _atss_by_loops(boxes, anchors, sizes, per_location, k=2)
    small, large = torch.tensor([[0.40, 0.40, 0.52, 0.55]]), torch.tensor([[0.05, 0.05, 0.95, 0.95]])
    for box, learns_more_than_ssd in ((small, True), (large, False)):
        atss = int((ablations.atss_matches(box, anchors, sizes, per_location, k=9) >= 0).sum())
        ssd = int((box_iou(box, anchors) >= 0.35).sum().clamp(min=1))
        assert (atss > ssd) is learns_more_than_ssd, (atss, ssd)


def test_object_balance_of_the_detection_ablations(monkeypatch):
    """benchmarks/detection_ablations.py --balance-objects: at power 0 the loss is torchvision's SSD loss; at
    power 1 each object's boxes weigh the same in all, and the weights add up to the positives either way.
    --ignore-from leaves the boxes overlapping an object by that much, unmatched, out of the mining."""
    import torch

    import mobilenets
    from mobilenets.models.ssd import Detector

    ablations = load_script("detection_ablations")
    matched = [torch.tensor([0, 0, 0, 1, -1, -1]), torch.tensor([-1, 0, 0, -1, -1, -1])]
    weights = ablations.object_weights(matched, 1.0)
    # three objects, six positive boxes: each object's boxes weigh 2 in all
    assert [w.tolist() for w in weights] == [pytest.approx([2 / 3, 2 / 3, 2 / 3, 2, 0, 0]),
                                             pytest.approx([0, 1, 1, 0, 0, 0])]  # fmt: skip
    assert [w.tolist() for w in ablations.object_weights(matched, 0.0)] == [[1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]

    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3).train()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=generator) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 90], [70, 20, 120, 60]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[5.0, 5, 100, 120]]), "labels": torch.tensor([2])}]  # fmt: skip
    def losses():
        return {name: float(value) for name, value in model(images, targets).items()}

    ssd = losses()
    monkeypatch.setattr(Detector, "compute_loss", Detector.compute_loss)  # undone after the test
    ablations._balance_objects(0.0)
    assert losses() == pytest.approx(ssd)
    ablations._balance_objects(1.0)
    assert losses()["bbox_regression"] != pytest.approx(ssd["bbox_regression"])
    # --ignore-from: no box overlaps by 1 without matching, so SSD's loss; from 0.1 fewer boxes are mined
    ablations._ignore_from(1.0)
    assert losses() == pytest.approx(ssd)
    ablations._ignore_from(0.1)
    assert losses()["classification"] < ssd["classification"]


def test_background_unmined_of_the_detection_ablations(monkeypatch, capsys):
    """benchmarks/detection_ablations.py --background-unmined: the trainer's --background-every switch is
    ignored, so an image without objects adds nothing to SSD's loss again."""
    import torch

    import mobilenets
    from mobilenets.models.ssd import Detector

    ablations = load_script("detection_ablations")
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=2, width_mult=0.35, resolution=96).train()
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 50, 80]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # fmt: skip

    def losses():
        return {name: float(value) for name, value in model(images, targets).items()}

    plain = losses()
    model.mine_empty_images = True
    assert losses()["classification"] > plain["classification"]  # the library's mining, the premise
    del model.mine_empty_images
    monkeypatch.setattr(Detector, "mine_empty_images", False)  # the patch replaces it; restored after the test
    ablations._background_unmined()
    assert "are not mined" in capsys.readouterr().err  # the log says so beside the trainer's own line
    model.mine_empty_images = True  # as the trainer sets it
    assert not model.mine_empty_images and losses() == pytest.approx(plain)


def test_box_segmentation_of_the_detection_ablations(monkeypatch):
    """benchmarks/detection_ablations.py --box-segmentation: a map position takes the class of the smallest box
    holding its centre (background where none does, and in an image without boxes); the branch adds a loss in
    training, and evaluation gives the detector's usual outputs."""
    import torch

    import mobilenets
    import mobilenets.models.ssd as ssd

    ablations = load_script("detection_ablations")
    # a 4x4 map over 128x128 pixels: centres at 16, 48, 80, 112; a large box (class 1) around a small one (2)
    targets = [{"boxes": torch.tensor([[0.0, 0, 100, 70], [40, 40, 90, 60]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # fmt: skip
    masks = ablations.box_masks(targets, 4, 4, (128, 128))
    assert masks[0].tolist() == [[1, 1, 1, 0], [1, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert not masks[1].any()

    monkeypatch.setattr(ssd, "SSDHead", ssd.SSDHead)  # both undone after the test
    monkeypatch.setattr(ssd.Detector, "compute_loss", ssd.Detector.compute_loss)
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3).train()
    images = list(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    plain = model(images, targets)
    ablations._box_segmentation(2.0)
    torch.manual_seed(0)
    branched = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3).train()
    branched.load_state_dict(model.state_dict(), strict=False)  # the same detector plus the new branch
    losses = branched(images, targets)
    assert float(losses["bbox_regression"]) == pytest.approx(float(plain["bbox_regression"]))
    assert float(losses["classification"]) > float(plain["classification"])  # plus 2 x the branch's loss
    assert sorted(branched.eval()(images)[0]) == ["boxes", "labels", "scores"]


def test_crop_chance_and_photometric_of_the_detection_ablations(monkeypatch):
    """benchmarks/detection_ablations.py --crop-chance 0 shows every training image whole (its box only
    resized, or mirrored by the flip), where the usual IoU crop moves it; --photometric 1 changes the
    pixels and leaves the boxes alone."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    from mobilenets.detection.data import detection_transforms

    ablations = load_script("detection_ablations")
    monkeypatch.setattr(T, "RandomIoUCrop", T.RandomIoUCrop)  # the patches replace it; restored after the test
    image = torch.randint(0, 256, (3, 100, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    target = {"boxes": tv_tensors.BoundingBoxes([[20.0, 10.0, 60.0, 90.0]], format="XYXY", canvas_size=(100, 200)),
              "labels": torch.tensor([1])}  # fmt: skip
    whole = ([6.4, 6.4, 19.2, 57.6], [44.8, 6.4, 57.6, 57.6])  # at 64 x 64, as it is and mirrored

    def seen(draws: int = 12):
        torch.manual_seed(0)
        transform = detection_transforms("ssdlite", 64, train=True, fill=(0.5, 0.5, 0.5))
        return [transform(image, target) for _ in range(draws)]

    def is_whole(box) -> bool:
        return any(box.tolist() == pytest.approx(expected, abs=1e-3) for expected in whole)

    assert not all(is_whole(out[1]["boxes"][0]) for out in seen())  # the usual crop
    ablations._crop_chance(0.0)
    plain = seen()
    assert all(is_whole(out[1]["boxes"][0]) for out in plain)
    ablations._photometric(1.0)
    distorted = seen()
    assert all(is_whole(out[1]["boxes"][0]) for out in distorted)
    undistorted = (plain[0][0], torch.flip(plain[0][0], dims=[-1]))  # the whole image either way round
    assert all(not torch.allclose(out[0], ref) for out in distorted for ref in undistorted)


@pytest.mark.filterwarnings("ignore")  # coco128's unlabelled images and orphan label files
def test_other_objects_of_the_detection_ablations(monkeypatch, shared_data):
    """benchmarks/detection_ablations.py --other-objects: with --classes person the training images that
    hold a person keep every object, the others as one more class; the rest of the training images and
    the validation split are as --classes alone leaves them."""
    import mobilenets.detection.data as data

    ablations = load_script("detection_ablations")
    monkeypatch.setattr(data, "_keep_classes", data._keep_classes)  # the patch replaces it; restored after
    every = data.find_detection_data(shared_data / "coco128")
    alone = data.find_detection_data(shared_data / "coco128", classes="person")
    ablations._other_objects()
    patched = data.find_detection_data(shared_data / "coco128", classes="person")
    assert patched.classes == [*alone.classes, "other object"] and patched.selected == ["person"]
    assert [t[1].tolist() for t in patched.val.targets] == [t[1].tolist() for t in alone.val.targets]
    with_person = 0
    for (boxes, labels, _), (person_boxes, _, _), (all_boxes, all_labels, _) in zip(
        patched.train.targets, alone.train.targets, every.train.targets
    ):
        if len(person_boxes):
            with_person += 1
            assert boxes.tolist() == all_boxes.tolist()
            assert labels.tolist() == [1 if label == every.classes.index("person") else 2 for label in all_labels]
        else:
            assert not len(labels)
    assert with_person == 61


def test_multi_scale_of_the_detection_ablations(monkeypatch):
    """benchmarks/detection_ablations.py --multi-scale: each training batch at one of the sides given,
    evaluation at the model's own."""
    import torch

    import mobilenets.models.ssd as ssd
    from mobilenets.models.registry import create_model

    ablations = load_script("detection_ablations")
    monkeypatch.setattr(ssd.Detector, "forward", ssd.Detector.forward)  # the patch replaces it; restored after
    ablations._multi_scale([96, 160])
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v2", num_classes=2, resolution=128, width_mult=0.35)
    sides = []
    model.backbone.register_forward_hook(lambda module, inputs, output: sides.append(inputs[0].shape[-2:]))
    images = [torch.rand(3, 60, 90), torch.rand(3, 80, 70)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    for _ in range(8):
        model(images, targets)
    assert {tuple(side) for side in sides} == {(96, 96), (160, 160)}
    model.eval()
    with torch.no_grad():
        model(images)
    assert tuple(sides[-1]) == (128, 128) and model.transform.fixed_size == (128, 128)


def test_decouple_speed_joins_runs_split_over_processes(tmp_path, monkeypatch, capsys):
    """A GPU window runs decouple_speed.py once per method and target; --from-json given several times
    prints one table under the first run's original, and a run cut off before its timing rounds keeps
    its accuracy with '-' for the speed it never measured."""
    script = load_script("decouple_speed", monkeypatch)
    timed = {"eager": 10.0, "channels_last": 8.0, "onnxruntime": 4.0}
    original = {"method": "original", "target": None, "reduction": 1.0, "top1": 0.9, "top1_finetuned": 0.9}
    runs = [
        [{**original, **timed}, {"method": "decouple + refine", "target": 2.0, "reduction": 2.01, "top1": 0.88,
                                 "top1_finetuned": 0.89, "eager": 5.0, "channels_last": 4.0, "onnxruntime": 2.0}],
        [{**original, "top1": 0.95}, {"method": "channel+decouple", "target": 3.0, "reduction": 3.0, "top1": 0.86,
                                      "top1_finetuned": 0.87}],
    ]  # fmt: skip
    args = []
    for i, rows in enumerate(runs):
        path = tmp_path / f"run{i}.json"
        path.write_text(
            json.dumps({"args": {"finetune_epochs": 1}, "title": "vgg16 at 32x32", "device": "X", "rows": rows})
        )
        args += ["--from-json", str(path)]
    plot = tmp_path / "sweep.png"  # drawn from the timed rows alone
    monkeypatch.setattr(sys, "argv", ["decouple_speed.py", *args, "--plot", str(plot)])
    script.main()
    assert plot.is_file()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 4  # header, original once, the two conversions
    assert (
        "| decouple + refine | 2x | 2.01x | 5.00 (2.00x) | 4.00 (2.00x) | 2.00 (2.00x) | 88.00% (-2.00) | 89.00% (-1.00) |"
        in lines
    )
    assert "| channel+decouple | 3x | 3.00x | - | - | - | 86.00% (-4.00) | 87.00% (-3.00) |" in lines


def test_contact_sheet_puts_pictures_in_rows_of_one_height(tmp_path, capsys):
    """benchmarks/contact_sheet.py (the README's drawn detections): each picture scaled to the height, keeping
    its shape, ``--columns`` to a row, rows left-aligned on white with a gap; bad options are one-line errors."""
    from PIL import Image

    sheet = load_script("contact_sheet")
    sizes, colours = [(40, 20), (20, 20), (60, 30)], ["red", "lime", "blue"]
    paths = []
    for index, (size, colour) in enumerate(zip(sizes, colours)):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", size, colour).save(paths[-1])
    out = tmp_path / "sheet.png"
    assert sheet.main([*map(str, paths), "--columns", "2", "--height", "10", "--out", str(out)]) == 0
    picture = Image.open(out).convert("RGB")
    gap = sheet.GAP
    # row 1: 20x10 red, gap, 10x10 lime; row 2: 20x10 blue - the widest row sets the width
    assert picture.size == (20 + gap + 10, 10 + gap + 10)
    assert picture.getpixel((0, 0)) == (255, 0, 0) and picture.getpixel((19, 9)) == (255, 0, 0)
    assert picture.getpixel((20 + gap, 0)) == (0, 255, 0) and picture.getpixel((20, 0)) == (255, 255, 255)
    assert picture.getpixel((0, 10 + gap)) == (0, 0, 255) and picture.getpixel((25, 10 + gap)) == (255, 255, 255)
    for bad, words in ((["--columns", "0"], "argument --columns: must be a positive integer, got 0"),
                       (["--height", "-3"], "argument --height: must be a positive integer, got -3")):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            sheet.main([str(paths[0]), *bad, "--out", str(out)])
        assert stopped.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sheet.main([str(tmp_path / "missing.png"), "--out", str(out)])
    assert f"no such picture: {tmp_path / 'missing.png'}" in capsys.readouterr().err


def test_background_ratio_of_the_detection_ablations(monkeypatch, capsys):
    """benchmarks/detection_ablations.py --background-ratio R: an image without objects mines R background
    boxes per positive of the batch's images with objects instead of 3, nothing else changed."""
    import torch

    import mobilenets
    from mobilenets.models.ssd import Detector

    ablations = load_script("detection_ablations")
    torch.manual_seed(0)
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=2, width_mult=0.35, resolution=96).train()
    model.mine_empty_images = True
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 50, 80]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # fmt: skip
    seen = spy_on_detector_loss(model)
    three = {name: float(value) for name, value in model(images, targets).items()}
    monkeypatch.setattr(Detector, "empty_image_ratio", Detector.empty_image_ratio)  # restored after the test
    ablations._background_ratio(6)
    six = {name: float(value) for name, value in model(images, targets).items()}
    positives = int((seen["matched"][0] >= 0).sum())
    hardest = background_cross_entropy(seen, 1).topk(6 * positives).values
    # the first 3 x positives of the six are the default's; the next ones are what R = 6 adds
    assert six["classification"] - three["classification"] == pytest.approx(
        hardest[3 * positives:].sum().item() / positives, rel=1e-4)  # fmt: skip
    assert six["bbox_regression"] == pytest.approx(three["bbox_regression"])
