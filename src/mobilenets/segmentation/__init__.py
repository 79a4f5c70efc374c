"""Semantic segmentation on MobileNet backbones: data, training, mIoU, drawing.

The segmenters themselves (Mobile DeepLabv3, LR-ASPP) are in
:mod:`mobilenets.models.segmentation` and are built through the one registry:
``mobilenets.create_model("lraspp_mobilenet_v3_large")``.  This package holds what a
segmentation task adds around them:

* :func:`find_segmentation_data` - image/mask folder pairs (a YAML config) or Pascal
  VOC, masks moved with the image by torchvision's transforms v2;
* :class:`SegmentationTrainer` - what ``mobilenets train`` runs for a segmenter;
* :func:`evaluate_segmenter` / :func:`segmentation_metrics` - mIoU, pixel accuracy and
  per-class IoU from one confusion matrix over the split;
* :func:`segment_images` / :func:`draw_segmentation` - masks for image files, drawn.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "SegmentationTrainer": "train",
    "confusion_matrix": "evaluate",
    "evaluate_segmenter": "evaluate",
    "segmentation_metrics": "evaluate",
    "segment_images": "predict",
    "draw_segmentation": "predict",
    "find_segmentation_data": "data",
    "segmentation_transforms": "data",
    "MaskPairs": "data",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
