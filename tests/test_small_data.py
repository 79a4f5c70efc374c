"""Small-data training pieces: batch-norm statistics re-estimated before evaluation, the new
classifier fitted to the pretrained body's features, validation every N epochs."""

from __future__ import annotations

import copy
import json

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from mobilenets.plots import plot_runs
from mobilenets.train import TrainConfig, train
from mobilenets.train.batchnorm import recompute_batchnorm, training_batchnorms
from mobilenets.train.transfer import fit_new_head

from .conftest import TORCHVISION_V2_WEIGHTS


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.01), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, momentum=0.01), nn.ReLU(),
    )  # fmt: skip


def _batches(count: int = 6, size: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [3 + 2 * torch.randn(size, 3, 12, 12, generator=generator) for _ in range(count)]


def test_recomputed_statistics_are_torchs_update_bn_on_the_batch_norms_that_train():
    net = _net()
    net.train()
    net[4].eval()  # a frozen batch norm: its statistics are pretrained and stay
    frozen = {k: v.clone() for k, v in net[4].state_dict().items()}
    names = training_batchnorms(net)
    assert names == ["1"]
    batches = _batches()
    seen = recompute_batchnorm(net, names, ((b, len(b)) for b in batches), net, limit=8)
    assert seen == 8  # stopped after two batches of four
    reference = copy.deepcopy(_net())
    update_bn(batches[:2], reference)  # torch's PreciseBN over the same two batches
    torch.testing.assert_close(net[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(net[1].running_var, reference[1].running_var)
    assert all(torch.equal(v, net[4].state_dict()[k]) for k, v in frozen.items())
    # modes and momentum as they were: the run goes on training
    assert net[1].training and not net[4].training and net[1].momentum == 0.01


def test_recomputing_on_no_batch_changes_nothing():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    assert recompute_batchnorm(net, training_batchnorms(net), iter(()), net, limit=8) == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_the_fitted_head_minimises_the_regularised_loss_and_nothing_else_moves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(96, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    body_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("4.")}
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    count, accuracy = fit_new_head(model, batches, l2=0.01, iterations=200, batch_statistics=["1"])
    assert count == 96
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body_before.items())  # BN buffers included
    # the optimum of the L2-regularised logistic regression on what the layer receives (dropout
    # off, batch statistics per batch of 32): its gradient is zero there
    model.eval()
    model[1].train()
    with torch.no_grad():
        features = torch.cat([model[:4](b) for b, _ in batches])
    weight = model[4].weight.detach().clone().requires_grad_(True)
    bias = model[4].bias.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(features @ weight.T + bias, y) + 0.005 * weight.square().sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3
    commonest = y.bincount().max().item() / len(y)
    assert accuracy == ((features @ weight.T + bias).argmax(1) == y).float().mean().item() > commonest + 0.1


def test_validation_every_n_epochs_and_the_plot_of_such_a_run(shared_data, tmp_path):
    config = TrainConfig(model="mobilenet_v2", data_dir=str(shared_data / "cifar10"), out=str(tmp_path / "run"),
                         width_mult=0.35, train_subset=64, val_subset=32, batch_size=32, epochs=3, workers=0,
                         eval_every=2, recompute_bn=64)  # fmt: skip
    summary = train(config, progress=False, log=lambda *_: None)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert ["top1" in h for h in history] == [False, True, True]  # epoch 2, and the last
    assert summary["best_top1"] == max(h["top1"] for h in history[1:])
    assert plot_runs([tmp_path / "run"], tmp_path / "curve.png").stat().st_size > 0


def test_a_fitted_head_run_resumes_exactly_without_fitting_again(shared_data, tmp_path):
    common = dict(model="mobilenet_v2", recipe="finetune", data_dir=str(shared_data / "cifar10"),
                  init_from=str(TORCHVISION_V2_WEIGHTS), train_subset=48, val_subset=16, batch_size=16, epochs=1,
                  resolution=32, workers=0, fit_head=True, freeze_layers=14)  # fmt: skip
    straight_log: list[str] = []
    train(TrainConfig(out=str(tmp_path / "a"), **common), progress=False, log=straight_log.append)
    assert any("fitted the new classifier to the body's features of 48 training images" in line
               for line in straight_log)  # fmt: skip
    assert train(TrainConfig(out=str(tmp_path / "b"), **common), progress=False, log=lambda *_: None,
                 stop_after_steps=1) is None  # fmt: skip
    resumed_log: list[str] = []
    train(TrainConfig(out=str(tmp_path / "b"), **common), progress=False, log=resumed_log.append)
    assert not any("fitted the new classifier" in line for line in resumed_log), (
        resumed_log
    )  # the checkpoint holds the fitted head
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
