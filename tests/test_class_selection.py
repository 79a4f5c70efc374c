"""--classes: a few classes of a detection or segmentation dataset, renumbered, the rest background
(issue 32), on coco128's real labels and on a generated COCO-JSON set."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mobilenets
from mobilenets.cli import main
from mobilenets.detection.data import find_detection_data
from mobilenets.errors import DataError
from mobilenets.segmentation.data import find_segmentation_data
from mobilenets.weights import read_weights_file

from .conftest import background_cross_entropy, spy_on_detector_loss
from .test_first_use import _coco


def _quiet(find, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coco128's unlabelled images and orphan label files
        return find(*args, **kwargs)


def test_yolo_people_of_coco128(shared_data):
    """coco128's people: 254 boxes on 61 training images (two more label files have no image) and
    350 on 73 validation images, labelled 1; every other object is gone."""
    everything = _quiet(find_detection_data, shared_data / "coco128")
    people = _quiet(find_detection_data, shared_data / "coco128", classes="person")
    assert people.classes == ["__background__", "person"] and people.selected == ["person"]
    for split, images, boxes in (("train", 61, 254), ("val", 73, 350)):
        dataset, original = getattr(people, split), getattr(everything, split)
        labels = [t[1] for t in dataset.targets]
        assert sum(1 for x in labels if len(x)) == images and sum(len(x) for x in labels) == boxes
        assert all(set(x.tolist()) <= {1} for x in labels)
        # the same boxes as the unselected reader's class 1 (person), in the same images
        for (kept, _, _), (all_boxes, all_labels, _) in zip(dataset.targets, original.targets):
            assert torch.equal(kept, all_boxes[all_labels == 1])
    # ids are the dataset's own: YOLO's 0 is person, 2 is car; the order given is the new numbering
    cars_first = _quiet(find_detection_data, shared_data / "coco128", classes="2,0")
    assert cars_first.classes == ["__background__", "car", "person"]


def test_coco_json_selection_renumbers_category_ids(tmp_path):
    root = _coco(tmp_path / "coco")
    blobs = _quiet(find_detection_data, root, classes="3")  # COCO ids are category ids
    assert blobs.classes == ["__background__", "blob"]
    labels = [t[1].tolist() for t in blobs.train.targets]
    assert labels == [[], [1], [], []]  # image 1 holds the blob (id 3), image 0 the square (id 1), now background
    assert _quiet(find_detection_data, root, classes="blob, square").classes == ["__background__", "blob", "square"]
    with pytest.raises(DataError, match=r"has no class 'dog'; it has: 1 square, 3 blob"):
        _quiet(find_detection_data, root, classes="dog")
    with pytest.raises(DataError, match="names '3' twice"):
        _quiet(find_detection_data, root, classes="blob,3")


def test_segmentation_people_of_coco128(shared_data):
    everything = _quiet(find_segmentation_data, shared_data / "coco128")
    people = _quiet(find_segmentation_data, shared_data / "coco128", classes="person")
    assert people.classes == ["unlabeled", "person"] and people.class_ids == [0, 1] and people.selected == ["person"]
    person = everything.classes.index("person")
    seen = 0
    for index in range(len(people.val)):
        mask, original = people.val.mask(index), everything.val.mask(index)
        assert set(mask.unique().tolist()) <= {0, 1, 255}
        assert torch.equal(mask == 1, original == person) and torch.equal(mask == 255, original == 255)
        seen += int((mask == 1).any())
    assert seen > 20  # coco128's val masks show people in most images
    with pytest.raises(DataError, match="has no class 'persons'"):
        _quiet(find_segmentation_data, shared_data / "coco128", classes="persons")


def test_a_run_records_its_classes_and_eval_applies_them(tmp_path, capsys):
    root = _coco(tmp_path / "coco", annotated=4)  # squares on images 0 and 2, blobs on 1 and 3
    out = tmp_path / "run"
    argv = ["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
            "--resolution", "96", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
            "--classes", "blob", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    _, arch, info = read_weights_file(out / "best.pt")
    assert arch["num_classes"] == 2 and info["classes"] == ["__background__", "blob"]
    assert info["selected_classes"] == ["blob"]
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(out / "best.pt"), "--data-dir", str(root), "--workers", "0", "--json"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 4 and metrics["boxes"] == 2  # only the blobs are scored
    # its export records them too, and eval of the file keeps the same classes (it refused the dataset)
    assert main(["export", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "run.onnx")]) == 0
    capsys.readouterr()
    code = main(["eval", "--exported", str(tmp_path / "run.onnx"), "--data-dir", str(root), "--workers", "0", "--json"])
    assert code == 0, capsys.readouterr().err
    from_file = json.loads(capsys.readouterr().out)
    assert (from_file["images"], from_file["boxes"]) == (4, 2)  # the same blobs, no squares
    assert from_file["map50"] == pytest.approx(metrics["map50"], abs=0.01)  # ONNX Runtime's float rounding
    # resuming with other classes is another run
    assert main([*argv[:-4], "--classes", "square", "--out", str(out)]) == 2
    assert "different settings" in capsys.readouterr().err


def test_a_detector_trains_only_on_images_with_objects_unless_told(tmp_path, capsys):
    """An SSD learns nothing from an image without objects (its negatives are mined 3 per object in
    the same image), so --skip-empty-images leaves such images out and says so (by default they stay);
    a training split without any object is then a one-line error."""
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=2, width_mult=0.35, resolution=96).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 96, 96), torch.rand(3, 96, 96)], [empty, empty])
    assert all(value.item() == 0 for value in losses.values()), losses  # the premise
    root = _coco(tmp_path / "coco", annotated=4)
    argv = ["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
            "--resolution", "96", "--width-mult", "0.35", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--no-progress", "--classes", "blob"]  # fmt: skip
    assert main([*argv, "--skip-empty-images", "--out", str(tmp_path / "skip")]) == 0
    assert "training on the 2 of 4 images that hold an object" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "keep")]) == 0
    assert "images that hold an object" not in capsys.readouterr().out
    bare = _coco(tmp_path / "bare", edits={"annotations": lambda boxes: boxes.clear()})
    argv[argv.index("--data-dir") + 1] = str(bare)
    assert main([*argv, "--skip-empty-images", "--out", str(tmp_path / "bare-run")]) == 2
    assert "none of the 4 training images holds an object" in capsys.readouterr().err


def test_a_detector_learns_background_from_every_kth_image_without_objects(tmp_path, capsys):
    """--background-every K: the images holding an object and every Kth of the others, each of those
    teaching its hardest default boxes as background, as many as the batch's images with objects mine on
    average (3 per positive), divided by the batch's positives as the rest of SSD's loss."""
    torch.manual_seed(0)
    model = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=2, width_mult=0.35, resolution=96).train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    blob = {"boxes": torch.tensor([[10.0, 20, 50, 80]]), "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    seen = spy_on_detector_loss(model)

    def losses(targets):
        return {name: value.item() for name, value in model(images, targets).items()}

    plain, plain_both = losses([blob, empty]), losses([blob, blob])
    model.mine_empty_images = True
    mined = losses([blob, empty])
    positives = int((seen["matched"][0] >= 0).sum())
    background = background_cross_entropy(seen, 1)
    assert mined["bbox_regression"] == pytest.approx(plain["bbox_regression"])
    expected = plain["classification"] + background.topk(3 * positives).values.sum().item() / positives
    assert mined["classification"] == pytest.approx(expected, rel=1e-5) and expected > plain["classification"]
    assert losses([blob, blob]) == pytest.approx(plain_both)  # no image without objects: SSD's loss
    assert all(value == 0 for value in losses([empty, empty]).values())  # nothing to take the count from

    root = _coco(tmp_path / "coco", count=6, annotated=6)  # objects of both classes on all six
    argv = ["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
            "--resolution", "96", "--width-mult", "0.35", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--no-progress", "--classes", "blob", "--background-every", "2",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "training on the 3 of 6 images that hold an object and 2 of the others (every 2)" in capsys.readouterr().out


def test_a_detector_never_trains_on_a_lone_image(tmp_path, capsys):
    """SSD's last map is 1x1, where batch norm cannot train on one image: an epoch's lone last image
    waits for the next epoch's shuffle (3 images at batch 2: one step an epoch), and a batch size of 1
    or a single training image is a one-line error, not batch norm's ValueError."""
    root = _coco(tmp_path / "coco", count=3, annotated=3)
    argv = ["train", "--model", "ssdlite_mobilenet_v2", "--recipe", "coco-ssdlite", "--data-dir", str(root),
            "--resolution", "96", "--width-mult", "0.35", "--epochs", "1", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main([*argv, "--batch-size", "2", "--out", str(tmp_path / "three")]) == 0, capsys.readouterr().err
    lines = (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 1
    assert main([*argv, "--batch-size", "1", "--out", str(tmp_path / "one")]) == 2
    assert "--batch-size 1: a detector trains on 2 or more images per process" in capsys.readouterr().err
    lone = ["--batch-size", "2", "--classes", "blob", "--skip-empty-images", "--out", str(tmp_path / "lone")]
    assert main([*argv, *lone]) == 2
    assert "1 training image(s); a detector trains on 2 or more per process" in capsys.readouterr().err


def test_a_detector_and_a_segmenter_train_with_their_tasks_recipe_unless_told(tmp_path, shared_data, capsys):
    """Without --recipe a run gets its task's recipe (a segmenter was refused the classifiers'
    default: 'recipe cifar10 is for classification models'); a recipe of another task is still refused."""
    root = _coco(tmp_path / "coco", annotated=4)
    detector = ["train", "--model", "ssdlite_mobilenet_v2", "--width-mult", "0.35", "--data-dir", str(root),
                "--resolution", "96", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress"]  # fmt: skip
    segmenter = ["train", "--model", "lraspp_mobilenet_v3_small", "--data-dir", str(shared_data / "coco128"),
                 "--classes", "person", "--resolution", "64", "--epochs", "1", "--batch-size", "2",
                 "--train-subset", "4", "--val-subset", "2", "--workers", "0", "--no-progress"]  # fmt: skip
    for argv, recipe in ((detector, "coco-ssdlite"), (segmenter, "seg-small")):
        out = tmp_path / recipe
        assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
        resolved = torch.load(out / "last.pt", weights_only=False)["resolved"]
        assert resolved["config"]["recipe"] == resolved["recipe"]["name"] == recipe
    assert main([*segmenter, "--recipe", "coco-ssdlite", "--out", str(tmp_path / "wrong")]) == 2
    assert "recipe coco-ssdlite is for detection models" in capsys.readouterr().err
