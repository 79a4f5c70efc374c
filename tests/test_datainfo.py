"""The data a model file carries is one typed record (DataInfo) for every file kind: written as the
same JSON as before, read back typed, wrong types refused naming the file and the key."""

from __future__ import annotations

import json

import pytest
import torch

import mobilenets
from mobilenets.datainfo import DataInfo
from mobilenets.predict import default_data_info
from mobilenets.weights import read_weights_file

CLASSES = ["cat", "dog", "fox"]


def test_every_weights_file_kind_reads_back_the_record_it_was_given(tmp_path):
    model = mobilenets.create_model("mobilenet_v2", num_classes=3, width_mult=0.35, resolution=64)
    given = {"classes": CLASSES, "transforms": "cifar", "resolution": 64, "note": "kept as it was"}
    for name in ("m.safetensors", "m.pt"):
        path = mobilenets.save_weights(model, tmp_path / name, data_info=given)
        info = read_weights_file(path)[2]
        assert isinstance(info, DataInfo) and info == given  # the same mapping: files written before read alike
        assert (info.classes, info.transforms, info.resolution, info.task) == (CLASSES, "cifar", 64, None)
        assert info.extra == {"note": "kept as it was"} and info.to_record() == given
    # a training checkpoint says it through its resolved settings
    resolved = {"classes": CLASSES, "recipe": {"transforms": "imagenet"}, "resolution": 96, "selected_classes": ["dog"]}
    torch.save({"model": model.state_dict(), "arch": model.arch, "resolved": resolved}, tmp_path / "last.pt")
    info = read_weights_file(tmp_path / "last.pt")[2]
    assert (info.classes, info.transforms, info.resolution, info.selected_classes) == (CLASSES, "imagenet", 96, ["dog"])
    assert "class_ids" not in info and info.get("class_ids") is None


def test_gaps_are_filled_from_the_model_and_its_task(tmp_path):
    classifier = mobilenets.create_model("mobilenet_v2", num_classes=1000, width_mult=0.35, resolution=64)
    info = default_data_info(classifier)
    assert (info.task, info.transforms, info.resolution, info.in_channels) == ("classification", "imagenet", 64, 3)
    assert len(info.classes) == 1000 and info.classes_source == "imagenet" and info.classes[1] == "goldfish"
    detector = mobilenets.create_model("ssdlite_mobilenet_v2", num_classes=3, width_mult=0.5, resolution=128)
    info = default_data_info(detector, {"classes": ["__background__", "a", "b"], "transforms": "imagenet"})
    assert (info.task, info.transforms, info.classes_source) == ("detection", "detection", None)  # the task's own
    tiny = mobilenets.create_model("mobilenet_v2", num_classes=2, width_mult=0.35, resolution=32, cifar=True)
    info = default_data_info(tiny)
    assert (info.transforms, info.classes, info.classes_source) == ("cifar", ["class 0", "class 1"], "placeholder")


def test_an_exported_file_reads_as_the_same_record(tmp_path):
    from mobilenets.export import OnnxClassifier, export_onnx

    model = mobilenets.create_model("mobilenet_v2", num_classes=3, width_mult=0.35, resolution=64).eval()
    export_onnx(model, tmp_path / "m.onnx", info=default_data_info(model, {"classes": CLASSES}))
    info = OnnxClassifier(tmp_path / "m.onnx").info
    assert isinstance(info, DataInfo) and info.classes == CLASSES and info.resolution == 64
    assert info.in_channels == 3 and info["precision"] == "fp32" and info.extra["precision"] == "fp32"


@pytest.mark.parametrize(
    "record, words",
    [
        ({"classes": "cat,dog"}, ["classes", "not a list of names"]),
        ({"resolution": "big"}, ["resolution", "not a positive whole number"]),
        ({"class_ids": [0, "1"]}, ["class_ids", "not a list of integers"]),
        ({"transforms": 3}, ["transforms", "not a name"]),
    ],
)
def test_a_record_of_the_wrong_type_is_refused_naming_the_file_and_key(tmp_path, capsys, record, words):
    from safetensors.torch import save_file

    model = mobilenets.create_model("mobilenet_v2", num_classes=3, width_mult=0.35, resolution=64)
    path = tmp_path / "bad.safetensors"
    metadata = {"format": "mobilenets", "arch": json.dumps(model.arch), "data": json.dumps(record)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    with pytest.raises(mobilenets.WeightsError) as caught:
        read_weights_file(path)
    assert str(path) in str(caught.value) and all(word in str(caught.value) for word in words)
    from mobilenets.cli import main

    assert main(["eval", "--checkpoint", str(path), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words[0] in err, err
