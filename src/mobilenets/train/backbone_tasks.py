"""The trainer a detector and a segmenter share: a task network built on a classifier's body.

Both are a pretrained classifier body (``backbone.body``) under new layers; both take data
that ``--classes`` can narrow, start from a classifier's weights (the body) or from their own
task's file (the whole network, the class scores new when the classes differ), train the new
layers at the full rate, and refuse a classifier's options.  A task's trainer
(``mobilenets.detection.train``, ``mobilenets.segmentation.train``) says how its data is found,
which parameters score the classes, its batches, loss and evaluation.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Subset

from ..errors import ConfigError
from ..models import create_model, get_model_entry
from ..predict import renamed_classes
from ..tasks import get_task, task_for_recipe
from ..weights import load_pretrained, load_weights, read_weights_file
from .loop import Trainer

__all__ = ["BODY_PREFIX", "BackboneTaskTrainer"]

# The pretrained part of a detector or segmenter: the classifier body it was cut from.
BODY_PREFIX = "backbone.body."


class BackboneTaskTrainer(Trainer):
    body_prefix = BODY_PREFIX
    recipes_hint = ""  # which recipes train this task, for the message refusing another
    single_image_batches_fail = True  # batch norms on 1x1 maps (SSD's last extra layer, DeepLab's image pooling)

    def _default_resolution(self) -> int:
        return get_model_entry(self.config.model).default_resolution

    def _find_data(self) -> Any:
        """The task's data: ``.train``, ``.val``, ``.classes`` and ``.selected`` (what --classes kept)."""
        raise NotImplementedError

    def _class_scores(self, model: nn.Module, head: list[str]) -> list[str]:
        """The parameters among ``head`` that score the classes (new when the classes differ)."""
        raise NotImplementedError

    def _datasets(self):
        task = task_for_recipe(self.recipe.transforms)
        if task is not get_task(self.task):
            raise ConfigError(f"recipe {self.recipe.name} is for {task.name} models; {self.recipes_hint}")
        if self.batch_size < 2:
            raise ConfigError(
                f"--batch-size {self.batch_size * self.dist.world_size}: {get_task(self.task).noun} "
                "trains on 2 or more images per process (its batch norms on 1x1 maps need them)"
            )
        data = self._find_data()
        self.selected_classes = data.selected
        train_set, val_set = data.train, data.val
        if self.config.train_subset:
            train_set = Subset(train_set, range(min(self.config.train_subset, len(train_set))))
        if self.config.val_subset:
            val_set = Subset(val_set, range(min(self.config.val_subset, len(val_set))))
        if len(train_set) < 2 * self.dist.world_size:
            raise ConfigError(f"--data-dir {self.config.data_dir}: {len(train_set)} training image(s); "
                              f"{get_task(self.task).noun} trains on 2 or more per process")  # fmt: skip
        return train_set, val_set, data.classes

    def _create_model(self) -> tuple[nn.Module, list[str]]:
        config = self.config
        model = create_model(
            config.model, num_classes=len(self.classes), width_mult=config.width_mult, resolution=self.resolution
        )
        # Everything but the pretrained body is new: extra layers and heads learn at the full rate.
        head = [name for name, _ in model.named_parameters() if not name.startswith(BODY_PREFIX)]
        if not config.init_from:
            return model, head
        state, _, info = read_weights_file(config.init_from)
        if any(key.startswith(("backbone.", "head.")) for key in state):  # the task's own file
            renamed = renamed_classes(info, self.classes, config.init_from)
            # (the path, not the state read above, so that a mismatch names the file)
            model, loaded, fresh = load_pretrained(model, config.init_from, head=self._class_scores(model, head),
                                                   new_classes=bool(renamed))  # fmt: skip
            kind = get_task(self.task).noun.split(" ", 1)[1]
            self.log(f"started from the {kind} {config.init_from}: {len(loaded)} tensors loaded"
                     + (f"; class scores new for {len(self.classes)} classes" if fresh else "")
                     + (f" ({renamed})" if renamed else ""))  # fmt: skip
        else:  # a classifier's weights (ours, torchvision's) start the backbone
            body = model.backbone.body
            load_weights(body, config.init_from)
            self.log(
                f"started the backbone from {config.init_from}: {len(body.state_dict())} tensors loaded; "
                f"the layers after it new ({len(head)} tensors)"
            )
        return model, head
