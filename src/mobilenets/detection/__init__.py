"""Object detection on MobileNet backbones: data, training, COCO evaluation, drawing.

The detectors themselves (SSD, SSDLite) are in :mod:`mobilenets.models.ssd` and are
built through the one registry: ``mobilenets.create_model("ssdlite_mobilenet_v2")``.
This package holds what a detection task adds around them:

* :func:`find_detection_data` - YOLO text layout or COCO JSON, boxes moved with the
  image by torchvision's transforms v2;
* :class:`DetectionTrainer` - what ``mobilenets train`` runs for a detector;
* :func:`evaluate_detector` / :func:`coco_metrics` - COCO mAP by pycocotools;
* :func:`detect_images` / :func:`draw_detections` - boxes for image files, drawn.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "DetectionTrainer": "train",
    "coco_metrics": "evaluate",
    "evaluate_detector": "evaluate",
    "detect_images": "predict",
    "draw_detections": "predict",
    "find_detection_data": "data",
    "detection_transforms": "data",
    "YoloDetection": "data",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
