"""The command line: output formats, exit codes, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilenets.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_profile_json(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v1", "--width-mult", "0.5", "--resolution", "160", "--json")
    assert code == 0
    data = json.loads(out)
    assert isinstance(data["mult_adds"], int) and isinstance(data["params"], int)
    assert round(data["mult_adds"] / 1e6) == 77  # Table 9 prints 76M for 0.50 MobileNet-160
    assert sum(layer["mult_adds"] for layer in data["layers"]) == data["mult_adds"]
    assert {"peak_activation_naive_bytes", "largest_activation_blockwise"} <= set(data)


def test_profile_table_and_by_type(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v2")
    assert code == 0 and "features.17.project.conv" in out and "300.8M mult-adds" in out
    code, out, _ = run(capsys, "profile", "mobilenet_v1", "--by-type")
    assert "94.86%" in out and "74.59%" in out and "24.33%" in out


def test_profile_cifar_default_resolution(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v2", "--cifar", "--num-classes", "10", "--summary")
    assert code == 0 and "@ 3x32x32" in out


def test_errors_are_messages_not_tracebacks(capsys):
    code, _, err = run(capsys, "profile", "mobilenet-v3-smal")
    assert code == 2 and "did you mean 'mobilenet_v3_small'" in err and "Traceback" not in err
    code, _, err = run(capsys, "profile", "mobilenet_v2", "--width-mult", "0")
    assert code == 2 and "--width-mult" in err and "positive" in err


def test_models_lists_costs(capsys):
    code, out, _ = run(capsys, "models", "--costs")
    assert code == 0 and "mobilenet_v1_conv" in out and "29.3M" in out


@pytest.mark.parametrize("command", [[], ["profile"], ["models"]])
def test_help_via_python_m(command):
    result = subprocess.run([sys.executable, "-m", "mobilenets", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: mobilenets" in result.stdout


def test_predict_with_torchvision_weights_names_the_classes(capsys, shared_data):
    from .conftest import TORCHVISION_V2_WEIGHTS

    images = sorted((shared_data / "imagenet-sample").glob("n01440764/*.jpg"))[:1]  # a tench
    images += sorted((shared_data / "imagenet-sample").glob("n02123045/*.jpg"))[:1]  # a tabby cat
    code, out, _ = run(
        capsys,
        "predict",
        "--model",
        "mobilenet_v2",
        "--weights",
        str(TORCHVISION_V2_WEIGHTS),
        *map(str, images),
        "--json",
    )
    assert code == 0
    results = json.loads(out)
    assert results[0]["top"][0][0] == "tench"
    assert results[1]["top"][0][0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert len(results[0]["top"]) == 5 and results[0]["top"][0][1] > results[0]["top"][1][1]


def test_predict_test_flip_averages_each_image_with_its_mirror(capsys, shared_data):
    """predict --test-flip, as eval --test-flip scores: the probabilities of the image's and its mirror image's
    logits averaged, checked against torchvision's own network on the library's preprocessing."""
    import torch
    import torchvision

    from mobilenets.data import load_rgb, transforms_for

    from .conftest import TORCHVISION_V2_WEIGHTS

    image = sorted((shared_data / "imagenet-sample").glob("n02123045/*.jpg"))[0]  # a tabby cat
    argv = ["predict", "--model", "mobilenet_v2", "--weights", str(TORCHVISION_V2_WEIGHTS), str(image), "--json"]
    code, out, _ = run(capsys, *argv, "--test-flip", "--top", "3")
    assert code == 0
    flipped = json.loads(out)[0]["top"]
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True))
    x = transforms_for("imagenet", 224, train=False)(load_rgb(str(image)))[None]
    with torch.no_grad():
        logits = reference.eval()(x), reference(x.flip(-1))
    expected = ((logits[0] + logits[1]) / 2).softmax(1)[0]
    assert [p for _, p in flipped] == pytest.approx(expected.topk(3).values.tolist(), abs=1e-4)
    # not the single pass's probabilities
    assert flipped[0][1] != pytest.approx(logits[0].softmax(1)[0].max().item(), abs=1e-4)


def test_predict_a_file_that_is_not_an_image(capsys, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    code, _, err = run(
        capsys, "predict", "--model", "mobilenet_v2", "--width-mult", "0.35", "--random-weights", str(bad)
    )
    assert code == 2 and "notes.jpg" in err


def test_train_predict_and_plot_a_run(capsys, shared_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--data-dir", str(shared_data / "cifar10")]
    args += ["--train-subset", "60", "--val-subset", "20", "--epochs", "1", "--batch-size", "20", "--workers", "0"]
    code, text, _ = run(capsys, *args, "--no-progress", "--out", str(out))
    assert code == 0 and "mult-adds" in text and "ms per image" in text
    image = sorted((shared_data / "cifar10" / "test" / "cat").glob("*.jpg"))[0]
    code, text, _ = run(capsys, "predict", "--checkpoint", str(out / "best.pt"), str(image), "--json")
    top = json.loads(text)[0]["top"]
    assert code == 0 and {name for name, _ in top} <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}  # fmt: skip
    code, text, _ = run(capsys, "plot", str(out), "--out", str(tmp_path / "p.png"))
    assert code == 0 and (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, text, _ = run(capsys, "plot", str(out), "--x", "minutes", "--out", str(tmp_path / "m.png"))
    assert code == 0 and (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, text, _ = run(capsys, "plot", str(out), "--x", "wall", "--out", str(tmp_path / "w.png"))
    assert code == 0 and (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = tmp_path / "old"  # a run trained before wall-clock times were recorded
    old.mkdir()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "wall_seconds"}) + "\n"
                                               for r in records))  # fmt: skip
    code, _, err = run(capsys, "plot", str(old), "--x", "wall", "--out", str(tmp_path / "o.png"))
    assert code == 2 and "old records no wall-clock times" in err and err.count("\n") == 1
    code, _, err = run(capsys, "plot", str(tmp_path), "--out", str(tmp_path / "q.png"))
    assert code == 2 and "not a training run" in err


def test_show_recipe(capsys):
    code, out, _ = run(capsys, "train", "--show-recipe", "imagenet-v2")
    assert code == 0 and "0.045" in out and "rmsprop" in out


@pytest.mark.parametrize("command", ["train", "eval", "decouple", "export", "bench"])
def test_help_examples_keep_their_line_continuations(command, capsys):
    """A lone backslash at a line's end inside a Python string joins the lines; the help must show it."""
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    examples = text[text.index("xample") :] if "xample" in text else ""
    assert all(len(line) <= 130 for line in examples.splitlines()), "an example lost its line continuation"
    assert examples.count(" \\\n") >= 1 or command == "eval"
