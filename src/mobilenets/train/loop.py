"""The training and evaluation loop: one process, or many through ``torchrun``.

A run directory (``--out``) holds ``config.json`` (the resolved settings),
``last.pt`` (written atomically after every epoch and every
``checkpoint_every`` steps / ``checkpoint_minutes``), ``best.pt`` (best
validation top-1), ``metrics.jsonl`` (one line per epoch), ``summary.json`` and,
if asked for, TensorBoard logs.  Re-running the same command in the same
directory continues from ``last.pt``, also from the middle of an epoch.

Resuming reproduces an uninterrupted run exactly because nothing random
depends on history: each epoch's data order is seeded by (seed, epoch), each
sample's augmentation by (seed, epoch, index) and each step's dropout by
(seed, epoch, step, rank).  The checkpoint therefore needs model, optimizer,
scheduler, gradient scaler, EMA and the epoch's running sums, and no RNG state.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..cost import profile
from ..cost.latency import measure_latency
from ..data import ResumableSampler, SeededDataset, make_loader, mix_seed
from ..errors import ConfigError, MobileNetsError
from ..extras import require
from ..files import atomic_write, output_dir
from ..tasks import get_task
from .batchnorm import recompute_batchnorm, training_batchnorms
from .config import RECIPE_OVERRIDES, TrainConfig, option_flag
from .distributed import Distributed, setup
from .precision import autocast
from .recipes import SCHEDULES, Recipe
from .transfer import fit_new_head

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "finetune", "train"]

# Settings that may differ when a run is resumed: they change how the run is carried out,
# not what it computes (NCHW and NHWC compute the same convolutions).  The epochs are not among
# them: they set the schedule.  Compared separately: the teacher by its file's content (the
# file may move), data_dir as the folder it resolves to (a relative path from elsewhere is the
# same data) and the class list.
RESUMABLE_CHANGES = {
    "workers", "device", "data_dir", "checkpoint_every", "checkpoint_minutes", "tensorboard", "teacher",
    "channels_last", "eval_every",
}  # fmt: skip


class TrainingDiverged(MobileNetsError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def _parameter_groups(model: nn.Module, recipe: Recipe, head: list[str]) -> list[dict[str, Any]]:
    """The pretrained body at ``body_lr_mult`` x the learning rate, the head (and a model
    trained from scratch) at the full rate; weight decay for the weights, none for the
    int8 ranges of a quantization-aware model (decay would only shrink them, clipping
    more every step)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        mult = 1.0 if name in head or not head else recipe.body_lr_mult
        decay = 0.0 if "quantizer." in name else recipe.weight_decay
        groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": recipe.lr * mult, "weight_decay": decay} for (mult, decay), ps in groups.items()]


def _optimizer(model: nn.Module, recipe: Recipe, head: list[str]) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, recipe, head)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups,
            lr=recipe.lr,
            alpha=recipe.rmsprop_decay,
            eps=recipe.rmsprop_eps,
            momentum=recipe.momentum,
        )
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}")


def lr_factor(recipe: Recipe, steps_per_epoch: int):
    """The learning-rate multiplier after ``step`` optimizer steps (per-step schedule).

    A linear warm-up over ``warmup_epochs`` (but at least ``warmup_steps``, up to half the run),
    then one of: cosine decay to zero;
    ``onecycle``, a straight line down to zero (with the warm-up, the triangular
    one-cycle schedule that fast CIFAR training uses with large batches); DeepLab's
    poly decay to zero; or the papers' staircase ×``lr_decay`` per epoch.

    The decay ends at ``decay_epochs`` (default: the last epoch).  A run longer than
    that goes on as PyTorch's schedulers do: cosine turns back up (it is
    ``CosineAnnealingLR(T_max=decay_epochs)``, which is what pytorch-cifar's code does
    when trained past ``T_max`` - the seed's "200 epochs, decayed until 150"); onecycle
    and poly stay at zero.
    """
    total = (recipe.decay_epochs or recipe.epochs) * steps_per_epoch
    warmup = max(round(recipe.warmup_epochs * steps_per_epoch), min(recipe.warmup_steps, total // 2))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if recipe.schedule == "cosine":  # periodic past the end, as CosineAnnealingLR
            return 0.5 * (1 + math.cos(math.pi * progress))
        if recipe.schedule == "onecycle":
            return max(0.0, 1 - progress)
        if recipe.schedule == "exponential":
            return recipe.lr_decay ** (step // steps_per_epoch)
        if recipe.schedule == "poly":  # DeepLab's and torchvision's segmentation schedule
            return (1 - min(1.0, progress)) ** 0.9
        raise ConfigError(f"unknown schedule {recipe.schedule!r} (one of {', '.join(SCHEDULES)})")

    return factor


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"0" * 65536)  # also fails early on a full disk
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc}", cli=f"cannot write to --out {out}: {exc}") from exc


def _settings_differ(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    # recipe overrides (--lr, --freeze-bn...) are compared as the recipe they resolve to, below
    config = [k for k in set(saved["config"]) | set(now["config"])
              if k not in RESUMABLE_CHANGES and k not in RECIPE_OVERRIDES]  # fmt: skip
    # a setting added since the run started was at its default then
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    differ = [k for k in config if saved["config"].get(k, defaults.get(k)) != now["config"].get(k, defaults.get(k))]
    saved_teacher, teacher = saved.get("teacher") or {}, now.get("teacher") or {}
    if saved_teacher.get("sha256") != teacher.get("sha256"):
        differ.append("teacher (another file)")
    # (runs written before data_root was recorded are compared by their classes alone)
    if saved.get("data_root", now.get("data_root")) != now.get("data_root"):
        differ.append(f"data_dir ({saved['data_root']} before)")
    if saved.get("classes") != now.get("classes"):
        differ.append("classes (the data's class list)")
    recipe = set(saved["recipe"]) | set(now["recipe"])
    recipe_defaults = {f.name: f.default for f in fields(Recipe)}  # (a run saved before a setting existed)
    return differ + [k for k in recipe if saved["recipe"].get(k, recipe_defaults.get(k)) != now["recipe"].get(k)]


class Trainer:
    """One training run of a task's model: data, model, optimizer and the run directory.

    A task's trainer subclasses it (classification's is ``mobilenets.classification.train``;
    detection's and segmentation's share ``train.backbone_tasks``) and supplies the hooks
    under "what a task supplies" - the datasets, the model, a batch's loss, the evaluation,
    the metrics' log text - and inherits everything else: resume, DDP, AMP, EMA, freezing, a
    fitted new head, re-estimated batch norms, checkpoints, metrics files.
    """

    task = ""  # the task registry's name of what this trains
    default_recipe = ""  # the recipe a run gets when it names none
    score_key = ""  # the validation metric best.pt is chosen by
    collate = None  # the DataLoader's collate_fn (None: stack images and labels)
    # validation metrics written to TensorBoard (as val_KEY) and to summary.json
    reported_metrics: tuple[str, ...] = ()
    body_prefix = ""  # where the classifier body (its `features` layers) sits in the model trained
    single_image_batches_fail = False  # see _drops_lone_image
    images_per_s_format = ".1f"  # how the epoch's log line writes the training rate

    def __init__(self, config: TrainConfig, dist: Distributed, *, progress: bool, log):
        # wall-clock from here to each epoch's end (data decoding and validation included)
        self.wall_mark = time.perf_counter()
        self.device = dist.device
        self.device_type = torch.device(self.device).type
        if config.channels_last is None:
            # NHWC convolutions train 1.1-1.4x faster than NCHW on CPUs (docs/benchmarks.md, "Training
            # on the CPU"); on GPUs the gain depends on precision and kernels, so there it is asked for.
            config = replace(config, channels_last=self.device_type == "cpu")
        if config.recipe is None:  # the task's own recipe (a segmenter would refuse a classifier's)
            config = replace(config, recipe=self.default_recipe)
        self.config, self.dist, self.log = config, dist, log if dist.is_main else (lambda *_: None)
        self._refuse_unsupported()
        self.progress = progress and dist.is_main
        self.out = Path(config.out)
        if dist.is_main:
            _check_writable(self.out)
        if config.precision == "fp16" and self.device_type != "cuda":
            raise ConfigError("fp16 training needs a GPU; use --precision bf16 on CPU")
        recipe = self.recipe = config.resolved_recipe()
        if recipe.batch_size % dist.world_size:
            raise ConfigError(f"batch size {recipe.batch_size} does not split evenly over {dist.world_size} processes")
        self.batch_size = recipe.batch_size // dist.world_size  # the recipe's batch is the global batch
        if recipe.freeze_body_epochs >= recipe.epochs:
            self.log(f"warning: the body stays frozen for the whole run (--freeze-body-epochs "
                     f"{recipe.freeze_body_epochs} >= --epochs {recipe.epochs}): only the classifier learns")  # fmt: skip
        self.resolution = config.resolution or recipe.resolution or self._default_resolution()
        self.selected_classes: list[str] | None = None  # what --classes kept (a task's _datasets sets it)
        self.new_head = False  # whether --init-from left a freshly initialised classifier (_create_model sets it)
        train_set, val_set, self.classes = self._datasets()
        self.resolved = {
            "config": asdict(config),
            "recipe": asdict(recipe),
            "resolution": self.resolution,
            "classes": self.classes,
            "data_root": str(Path(config.data_dir).resolve()),
            **({"selected_classes": self.selected_classes} if self.selected_classes else {}),
            "world_size": dist.world_size,
            **self._recorded(),
        }
        self.epoch, self.step, self.best_score, self.history = 0, 0, -1.0, []
        self._build_loaders(train_set, val_set)
        self._build_model(train_set)
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, samples, non-finite

    def _refuse_unsupported(self) -> None:
        """Refuse, in one line, the options set that only other tasks take (a field's ``tasks``)."""
        owners: dict[tuple[str, ...], list[str]] = {}
        for setting in fields(TrainConfig):
            tasks = setting.metadata.get("tasks")
            if tasks and self.task not in tasks and getattr(self.config, setting.name) != setting.default:
                owners.setdefault(tasks, []).append(option_flag(setting.name))
        if owners:
            task = get_task(self.task)
            flags = [flag for group in owners.values() for flag in group]
            whose = "; ".join(f"{', '.join(group)} {'is' if len(group) == 1 else 'are'} for "
                              f"{' or '.join(get_task(name).noun for name in takers)}"
                              for takers, group in owners.items())  # fmt: skip
            raise ConfigError(f"{', '.join(flags)}: not available for {task.noun} ({self.config.model} is a "
                              f"{task.name} model; {whose})")  # fmt: skip

    # -- what a task supplies --------------------------------------------------------
    def _default_resolution(self) -> int:
        raise NotImplementedError

    def _datasets(self):
        """(train set, validation set, class names)."""
        raise NotImplementedError

    def _create_model(self) -> tuple[nn.Module, list[str]]:
        """The model, started from ``--init-from`` if given, and the names of its head's
        parameters (trained at the full rate while the body moves slowly or is frozen)."""
        raise NotImplementedError

    def _to_device(self, batch) -> tuple[Any, Any, int]:
        """(inputs, targets, images in the batch) on the training device."""
        raise NotImplementedError

    def _loss(self, inputs, targets) -> torch.Tensor:
        raise NotImplementedError

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Validation metrics, ``score_key`` among them."""
        raise NotImplementedError

    def _metrics_text(self, record: dict[str, Any]) -> str:
        """The validation metrics as the epoch's log line writes them."""
        raise NotImplementedError

    def _recorded(self) -> dict[str, Any]:
        """What the task adds to the run's resolved settings (config.json, checkpoints)."""
        return {}

    def _transform_model(self, model: nn.Module, train_set) -> nn.Module:
        """The model as trained (a quantization-aware copy, for one), before it moves to the device."""
        return model

    def _deployed(self, model: nn.Module) -> nn.Module:
        """The trained model as it is deployed, for the summary's cost and latency."""
        return model

    def _build_loaders(self, train_set, val_set) -> None:
        dist = self.dist
        # Each process validates every world_size-th image; the counts are summed.
        val_shard = Subset(val_set, range(dist.rank, len(val_set), dist.world_size)) if dist.enabled else val_set
        self.seeded, self.sampler, self.train_loader, self.val_loader = self._loaders(train_set, val_shard)
        batches = self.sampler.num_samples / self.batch_size
        lone = self._drops_lone_image(self.sampler.num_samples)
        self.steps_per_epoch = math.floor(batches) if lone else math.ceil(batches)

    def _drops_lone_image(self, samples: int) -> bool:
        """Whether an epoch's last batch would be a single image that this task cannot train on: a
        detector's and a segmenter's batch norms sit on 1x1 maps (SSD's last extra layer, DeepLab's
        image pooling), where one image gives one value per channel. The image is in another batch
        next epoch (each epoch is shuffled anew). ``samples``: this process's images an epoch."""
        return self.single_image_batches_fail and samples > 1 and samples % self.batch_size == 1

    @property
    def loader_workers(self) -> int:
        """``config.workers``, or by default none on the CPU and 2 on a GPU. On the CPU, worker
        processes compete with the training for the same cores, and the training loader forks
        new ones each epoch from a process that has grown to gigabytes, whose pages then fault
        copy-on-write as training writes them: on 2 cores (AMD EPYC Zen 5) a detector's epochs ran
        at 2.6-3.0 images/s with 1 or 2 workers and 6.2-7.9 without (sys time 75 s against 19 s
        over 3 epochs), a classifier's fine-tuning 10 % faster."""
        if self.config.workers is not None:
            return self.config.workers
        return 0 if self.device_type == "cpu" else 2

    def _loaders(self, train_set, val_set) -> tuple[SeededDataset | None, ResumableSampler, Any, Any]:
        """(the seeded training set or None, its sampler, the training and validation loaders)."""
        config, dist = self.config, self.dist
        seeded = SeededDataset(train_set, config.seed)
        sampler = ResumableSampler(seeded, rank=dist.rank, world_size=dist.world_size, seed=config.seed)
        loader = dict(workers=self.loader_workers, collate_fn=self.collate)
        lone = self._drops_lone_image(sampler.num_samples)
        train_loader = make_loader(seeded, self.batch_size, sampler=sampler, drop_last=lone, **loader)
        return seeded, sampler, train_loader, make_loader(val_set, self.batch_size, **loader)

    def _epoch_line(self, record: dict[str, Any], validated: bool) -> str:
        metrics = f"{self._metrics_text(record)}, " if validated else ""
        rate = format(record["train_images_per_s"], self.images_per_s_format)
        unvalidated = "" if validated else f" (validated every {self.config.eval_every} epochs)"
        return (f"epoch {record['epoch']}/{self.recipe.epochs}: train loss {record['train_loss']:.4f}, "
                f"{metrics}{rate} img/s{unvalidated}")  # fmt: skip

    # -- the model -------------------------------------------------------------------
    def _build_model(self, train_set) -> None:
        config, recipe = self.config, self.recipe
        torch.manual_seed(config.seed)  # the same initial weights in every process
        split = recipe.body_lr_mult != 1 or recipe.freeze_body_epochs > 0
        if self.dist.enabled and recipe.freeze_body_epochs > 0:
            raise ConfigError("a frozen body cannot be trained under torchrun (DDP); use --body-lr-mult instead")
        model, self.head = self._create_model()
        self.fixed_layers = self._frozen_layers(model)  # refused here, before anything is written
        for name, p in model.named_parameters():
            if self._in_fixed_layer(name):
                p.requires_grad_(False)  # before DDP wraps the model: its set of trained tensors is fixed
        model = self._transform_model(model, train_set)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        if recipe.fit_head and self.new_head and not (self.out / "last.pt").exists():
            self._fit_head()  # before DDP wraps the model: its construction hands rank 0's head to every process
        net: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.dist.local_rank] if self.device_type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        compiled = config.compile or config.compile_mode is not None
        self.net = torch.compile(net, mode=config.compile_mode) if compiled else net
        self.optimizer = _optimizer(self.model, recipe, self.head if split else [])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(recipe, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=config.precision == "fp16")
        self.ema = None
        if recipe.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)

    def _fit_head(self) -> None:
        """The new classifier fitted to the pretrained body's features (see ``fit_new_head``)."""
        started = time.perf_counter()
        self.model.train()
        self._freeze()  # the batch norms in the modes the first epoch trains them in
        batches = (inputs_targets for *inputs_targets, _ in self._training_batches())
        count, accuracy = fit_new_head(self.model, batches, label_smoothing=self.recipe.label_smoothing,
                                       batch_statistics=training_batchnorms(self.model))  # fmt: skip
        self.log(f"fitted the new classifier to the body's features of {count} training images (their top-1 "
                 f"{100 * accuracy:.1f}%) in {time.perf_counter() - started:.0f} s")  # fmt: skip

    # -- checkpoints -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "arch": self.model.arch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,  # epochs completed
            "step": self.step,  # steps done in the epoch after those
            "epoch_sums": self.epoch_sums.cpu(),
            "best_score": self.best_score,
            "history": self.history,
            "resolved": self.resolved,
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def save(self, name: str = "last.pt") -> None:
        if not self.dist.is_main:
            return
        # Never overwrite a good checkpoint with a diverged model: a finite loss
        # can still be followed by an update that made the weights infinite.
        finite = all(p.isfinite().all() for p in self.model.state_dict().values() if p.is_floating_point())
        if self.epoch_sums[2].item() or not finite:
            raise self._diverged()
        state = self.state()
        atomic_write(self.out / name, lambda tmp: torch.save(state, tmp))

    def architecture_to_resume(self) -> dict[str, Any] | None:
        """The model structure recorded in ``out/last.pt`` when this run will continue from it
        (same settings), so a task can rebuild that structure instead of deriving it again."""
        path = self.out / "last.pt"
        if not path.exists():
            return None
        # memory-mapped: only the two small records are read here; resume() loads the tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return None if _settings_differ(state["resolved"], self.resolved) else state.get("arch")

    def resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        differ = _settings_differ(state["resolved"], self.resolved)
        if differ:
            raise ConfigError(
                f"{self.out} holds a run with different settings ({', '.join(sorted(set(differ)))}); "
                "use another --out to start a new run"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.epoch, self.step = state["epoch"], state["step"]
        # (checkpoints written before detection called it best_top1)
        self.best_score, self.history = state.get("best_score", state.get("best_top1")), state["history"]
        self.epoch_sums = state["epoch_sums"].to(self.device)
        where = f"epoch {self.epoch + 1}, step {self.step}" if self.step else f"the end of epoch {self.epoch}"
        self.log(f"resuming {self.out} from {where}")
        return True

    def _frozen_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Name prefixes of ``model``'s first ``freeze_layers`` body layers (checked against it)."""
        count = self.config.freeze_layers
        if not count:
            return ()
        try:
            body = model.get_submodule(self.body_prefix + "features")
        except AttributeError:
            body = None
        if not isinstance(body, nn.Sequential):
            raise ConfigError(f"{self.config.model} keeps no `features` layers to freeze; drop --freeze-layers")
        if count >= len(body):
            raise ConfigError(
                f"freeze_layers={count} would freeze the whole body of {len(body)} layers",
                cli=f"--freeze-layers {count} would freeze the whole body of {len(body)} layers; use fewer",
            )
        return tuple(f"{self.body_prefix}features.{i}." for i in range(count))

    def _in_fixed_layer(self, name: str) -> bool:
        """Whether parameter or module ``name`` lies in one of the ``freeze_layers`` layers."""
        return bool(self.fixed_layers) and (name + ".").startswith(self.fixed_layers)

    def _freeze(self) -> None:
        """The body's weights and batch-norm statistics held for the first ``freeze_body_epochs``
        and, always, in its first ``freeze_layers`` layers; with ``freeze_bn``, every batch norm
        keeps its (pretrained) statistics."""
        frozen = self.epoch < self.recipe.freeze_body_epochs
        if self.recipe.freeze_body_epochs > 0 or self.fixed_layers:
            for name, p in self.model.named_parameters():
                p.requires_grad_((name in self.head or not frozen) and not self._in_fixed_layer(name))
        head_modules = {name.rsplit(".", 1)[0] for name in self.head}
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in head_modules:
                if self.recipe.freeze_bn or frozen or self._in_fixed_layer(name):
                    module.eval()

    def _training_batches(self):
        """The current epoch's training batches from its first, on the device (as ``_to_device``):
        the images and augmentations that epoch trains on, for passes outside the training loop."""
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = 0
        if self.seeded is not None:
            self.seeded.epoch = self.epoch
        return map(self._to_device, self.train_loader)

    def _bn_forward(self, model: nn.Module):
        """A function running every batch norm of ``model`` on a batch's inputs (a task whose
        network needs targets in training mode replaces it)."""
        return model

    def _recompute_bn(self, model: nn.Module) -> None:
        """The running statistics of the batch norms that train, re-estimated on training
        images with the weights just reached (see ``mobilenets.train.batchnorm``). Called at the
        end of an epoch, while the model is still in its training modes."""
        names = training_batchnorms(self.model)
        model.eval()  # every other module as in evaluation: frozen batch norms keep their statistics
        batches = ((inputs, count) for inputs, _, count in self._training_batches())
        world = self.dist.world_size
        recompute_batchnorm(model, names, batches, self._bn_forward(model), limit=self.recipe.recompute_bn,
                            average=lambda t: self.dist.all_sum(t).div_(world))  # fmt: skip

    def _diverged(self) -> TrainingDiverged:
        last = self.out / "last.pt"
        return TrainingDiverged(
            f"the loss became NaN or infinite in epoch {self.epoch + 1}; the last good checkpoint "
            f"({last if last.exists() else 'none yet'}) is intact - lower --lr and run the command again"
        )

    # -- training ------------------------------------------------------------------
    def train_epoch(self, stop_at_step: int | None) -> bool:
        """Train from ``self.step`` to the end of the epoch; False if stopped early."""
        config, dist = self.config, self.dist
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.step * self.batch_size
        if self.seeded is not None:
            self.seeded.epoch = self.epoch
        self.net.train()
        self._freeze()
        started, seen_at_start, last_save = time.perf_counter(), self.epoch_sums[1].item(), time.monotonic()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}",
            total=self.steps_per_epoch,
            initial=self.step,
            disable=not self.progress,
            leave=False,
            unit="batch",
        )
        for batch in bar:
            inputs, targets, count = self._to_device(batch)
            torch.manual_seed(mix_seed(config.seed, self.epoch, self.step, dist.rank))  # dropout
            with autocast(self.device_type, config.precision):
                loss = self._loss(inputs, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss = loss.detach().double()
            n = torch.tensor(count, device=loss.device, dtype=torch.float64)
            self.epoch_sums += torch.stack([loss * n, n, (~loss.isfinite()).double()])
            self.step += 1
            # Reading the loss waits for the GPU, so on GPU it is checked every 20 steps.
            if self.device_type == "cpu" or self.step % 20 == 0 or self.step == self.steps_per_epoch:
                loss_sum, seen, bad = self.epoch_sums.tolist()
                if bad:
                    raise self._diverged()
                rate = (seen - seen_at_start) * dist.world_size / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", img_s=f"{rate:.0f}", refresh=False)
            global_step = self.epoch * self.steps_per_epoch + self.step
            if self.step < self.steps_per_epoch and (
                (config.checkpoint_every and self.step % config.checkpoint_every == 0)
                or time.monotonic() - last_save > 60 * config.checkpoint_minutes
            ):
                self.save()
                last_save = time.monotonic()
            if stop_at_step is not None and global_step >= stop_at_step:
                self.save()
                return False
        self.train_seconds = time.perf_counter() - started
        self.train_images_per_s = (self.epoch_sums[1].item() - seen_at_start) * dist.world_size / self.train_seconds
        return True

    def end_epoch(self, writer) -> None:
        eval_model = self.ema.module if self.ema is not None else self.model
        validates = (self.epoch + 1) % self.config.eval_every == 0 or self.epoch + 1 == self.recipe.epochs
        if self.recipe.recompute_bn and validates:
            self._recompute_bn(eval_model)
        metrics = self._evaluate(eval_model) if validates else {}
        loss_sum, seen, _ = self.dist.all_sum(self.epoch_sums.clone()).tolist()
        # Wall-clock since the run began, summed over resumed processes (the time an
        # interruption lost after the last checkpoint is not counted: it was not kept).
        now = time.perf_counter()
        wall = (self.history[-1].get("wall_seconds", 0.0) if self.history else 0.0) + now - self.wall_mark
        self.wall_mark = now
        record = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_images_per_s": self.train_images_per_s,
            "train_seconds": self.train_seconds,
            "wall_seconds": wall,
            "lr": max(group["lr"] for group in self.optimizer.param_groups),  # the head's, when the body is slower
            **{k: v for k, v in metrics.items() if not k.startswith("per_class")},
        }
        self.history.append(record)
        self.log(self._epoch_line(record, validated=bool(metrics)))
        if writer is not None:
            for key in ("train_loss", "lr", "train_images_per_s"):
                writer.add_scalar(key, record[key], self.epoch + 1)
            for key in self.reported_metrics if metrics else ():
                writer.add_scalar(f"val_{key}", record[key], self.epoch + 1)
            writer.flush()
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_sums.zero_()
        improved = bool(metrics) and metrics[self.score_key] > self.best_score
        self.best_score = max(self.best_score, metrics.get(self.score_key, -1.0))
        self.save()
        if improved:
            self.save("best.pt")
        if self.dist.is_main:
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            atomic_write(self.out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))

    def summary(self) -> dict[str, Any]:
        model = self.ema.module if self.ema is not None else self.model
        model = self._deployed(model.to("cpu", memory_format=torch.contiguous_format).eval())
        cost = profile(model, (model.in_channels, self.resolution, self.resolution))
        final = self.history[-1] if self.history else {}
        summary = {
            "model": self.config.model,
            "epochs": self.recipe.epochs,
            **{key: final.get(key) for key in self.reported_metrics if key != "loss"},
            f"best_{self.score_key}": self.best_score,
            "mult_adds": cost.mult_adds,
            "params": cost.params,
            # A first look, not a benchmark (`mobilenets bench` is one): 10 timed calls are enough
            # for a median, and a detector at 512 px spends 3 s on the default 23.
            "latency_ms_batch1_cpu": measure_latency(model, self.resolution, runs=10, warmup=2),
            "train_seconds": sum(h["train_seconds"] for h in self.history),
            "wall_seconds": final.get("wall_seconds"),
            "world_size": self.dist.world_size,
            "out": str(self.out),
        }
        atomic_write(self.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
        return summary


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    log=print,
    stop_after: int | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any] | None:
    """Train ``config.model`` with its recipe; resume from ``out/last.pt`` if present.

    Under ``torchrun`` this is one process of a DistributedDataParallel run; only
    rank 0 logs and writes files.  ``stop_after`` (epochs) and
    ``stop_after_steps`` (optimizer steps in all) end this call early with a
    checkpoint, as an interruption would; calling again with the same config
    continues the run.  Returns the summary (None if stopped early, or on ranks
    other than 0).
    """
    config.validate()
    if config.device is None:
        config = replace(config, device="cuda" if torch.cuda.is_available() else "cpu")
    dist = setup(config.device)
    try:
        # A run refused before it wrote anything leaves no empty run directory behind.
        with output_dir(config.out) if dist.is_main else contextlib.nullcontext():
            return _run(config, dist, progress, log, stop_after, stop_after_steps)
    finally:
        dist.shutdown()


def trainer_class(model: str) -> type[Trainer]:
    """The :class:`Trainer` of ``model``'s task (the task registry names it, so this loop imports
    no task's package)."""
    from ..models import get_model_entry

    return get_task(get_model_entry(model).task).trainer()


def _run(config: TrainConfig, dist: Distributed, progress: bool, log, stop_after, stop_after_steps):
    trainer = trainer_class(config.model)(config, dist, progress=progress, log=log)
    trainer.resume()
    if dist.is_main:
        atomic_write(
            trainer.out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(trainer.resolved, indent=2))
        )
        if dist.enabled:
            log(f"training on {dist.world_size} processes ({dist.device} on rank 0)")
    writer = None
    if config.tensorboard and dist.is_main:
        require("tensorboard", "--tensorboard", None)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(trainer.out / "tensorboard"))
    end_epoch = trainer.recipe.epochs if stop_after is None else min(stop_after, trainer.recipe.epochs)
    while trainer.epoch < end_epoch:
        if not trainer.train_epoch(stop_after_steps):
            return None
        trainer.end_epoch(writer)
    if writer is not None:
        writer.close()
    if stop_after is not None and trainer.epoch < trainer.recipe.epochs:
        return None
    return trainer.summary() if dist.is_main else None


def finetune(model: str, weights: str, data_dir: str, out: str, **settings: Any) -> dict[str, Any] | None:
    """Fine-tune ``model`` from pretrained ``weights`` on ``data_dir``: :func:`train` with the
    ``finetune`` recipe (AdamW, the body at 0.1x the head's learning rate with its batch-norm
    statistics held, the new classifier fitted first, 96x96 inputs with ImageNet statistics)
    unless ``recipe=`` says otherwise.  ``settings`` are any other :class:`TrainConfig` fields
    (``teacher=`` for distillation, ``epochs=``...)."""
    progress = settings.pop("progress", sys.stderr.isatty())  # no bars in a log file or a notebook's pipe
    log = settings.pop("log", print)
    settings.setdefault("recipe", "finetune")
    config = TrainConfig(model=model, data_dir=str(data_dir), out=str(out), init_from=str(weights), **settings)
    return train(config, progress=progress, log=log)
