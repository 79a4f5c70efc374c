"""Interchange with torchvision and safe, atomic saving/loading."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.transforms import v2 as T

from mobilenets import WeightsError, create_model, load_model, load_weights, save_weights

from .conftest import TORCHVISION_V2_WEIGHTS


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights *and* batch-norm statistics, so a mis-mapped tensor shows."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            else:
                tensor.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize(
    "name, options",
    [
        ("mobilenet_v2", {}),
        ("mobilenet_v2", {"width_mult": 0.5, "num_classes": 10}),
        ("mobilenet_v2", {"width_mult": 1.4}),
        ("mobilenet_v3_large", {}),
        ("mobilenet_v3_small", {"num_classes": 100}),
    ],
)
def test_torchvision_state_dict_gives_identical_outputs(name, options):
    theirs = randomise(getattr(torchvision.models, name)(**options))
    ours = create_model(name, weights=theirs.state_dict(), **options).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected, actual = theirs(x), ours(x)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_published_torchvision_weights_classify_real_images(shared_data):
    """torchvision's real ImageNet weights, loaded from the file it publishes,
    predict exactly as torchvision does on real ImageNet images."""
    if not TORCHVISION_V2_WEIGHTS.is_file():
        pytest.skip("torchvision MobileNetV2 weights not in shared data")
    ours = create_model("mobilenet_v2", weights=TORCHVISION_V2_WEIGHTS).eval()
    theirs = torchvision.models.mobilenet_v2()
    theirs.load_state_dict(torch.load(TORCHVISION_V2_WEIGHTS, weights_only=True))
    theirs.eval()
    dataset = torchvision.datasets.ImageFolder(
        shared_data / "imagenet-sample",
        transform=T.Compose(
            [T.ToImage(), T.Resize(256), T.CenterCrop(224), T.ToDtype(torch.float32, scale=True),
             T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
        ),
    )  # fmt: skip
    indices = range(0, len(dataset), 25)  # 40 classes spread over the 1000
    images = torch.stack([dataset[i][0] for i in indices])
    labels = torch.tensor([dataset[i][1] for i in indices])
    with torch.no_grad():
        ours_logits, their_logits = ours(images), theirs(images)
    assert torch.allclose(ours_logits, their_logits, atol=1e-4)
    accuracy = (ours_logits.argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.6  # 83.8 % over all 1000 sample images; a broken mapping gives ~0


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_roundtrip_rebuilds_architecture(tmp_path, suffix):
    model = randomise(create_model("mobilenet_v2", width_mult=0.5, num_classes=10, cifar=True))
    path = save_weights(model, tmp_path / f"model{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    restored = load_model(path).eval()
    assert restored.arch == model.arch
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))


def test_mismatched_weights_name_the_keys(tmp_path):
    save_weights(create_model("mobilenet_v2", num_classes=10), tmp_path / "ten.safetensors")
    with pytest.raises(WeightsError, match=r"classifier\.1\.weight: file \(10, 1280\) vs model \(1000, 1280\)"):
        create_model("mobilenet_v2", weights=tmp_path / "ten.safetensors")
    with pytest.raises(WeightsError, match="width_mult"):
        create_model("mobilenet_v2", width_mult=0.75, num_classes=10, weights=tmp_path / "ten.safetensors")
    with pytest.raises(WeightsError, match="missing keys"):
        create_model("mobilenet_v3_small", weights=tmp_path / "ten.safetensors")


def test_loading_never_runs_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(WeightsError, match="never loaded because unpickling can run code"):
        create_model("mobilenet_v2", weights=path)


def test_other_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("mobilenet_v2", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="safetensors"):
        create_model("mobilenet_v2", weights=tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        create_model("mobilenet_v2", weights=tmp_path / "list.pth")


def test_ddp_and_compile_prefixes_are_stripped():
    model = randomise(create_model("mobilenet_v3_small"))
    prefixed = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    loaded = load_weights(create_model("mobilenet_v3_small"), prefixed)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
