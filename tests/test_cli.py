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
    assert code == 2 and "width_mult" in err


def test_models_lists_costs(capsys):
    code, out, _ = run(capsys, "models", "--costs")
    assert code == 0 and "mobilenet_v1_conv" in out and "29.3M" in out


@pytest.mark.parametrize("command", [[], ["profile"], ["models"]])
def test_help_via_python_m(command):
    result = subprocess.run([sys.executable, "-m", "mobilenets", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: mobilenets" in result.stdout
