"""COCO evaluation that reports zeros instead of dropping every key when nothing was detected."""
from __future__ import annotations

import tempfile

from mmdet.datasets.api_wrappers import COCO
from mmdet.evaluation import CocoMetric
from mmdet.registry import METRICS


class _EmptyResultsCOCO(COCO):
    """COCO ground truth whose ``loadRes`` accepts an empty prediction list.

    pycocotools' ``loadRes([])`` raises ``IndexError``, and mmdet 3.3.0's ``CocoMetric``
    then returns an empty dict. With an empty results object COCOeval scores every
    category with ground truth as 0 AP, which is the correct value.
    """

    def loadRes(self, resFile):  # noqa: N802  (pycocotools' name)
        if isinstance(resFile, list) and not resFile:
            results = COCO()
            results.dataset = dict(images=list(self.dataset["images"]),
                                   categories=list(self.dataset["categories"]), annotations=[])
            results.createIndex()
            return results
        return super().loadRes(resFile)


@METRICS.register_module()
class SafeCocoMetric(CocoMetric):
    """``CocoMetric`` that reports every usual key (0.0 AP) when there are zero detections."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._coco_api is not None:
            self._coco_api.__class__ = _EmptyResultsCOCO

    def compute_metrics(self, results: list) -> dict[str, float]:
        if self._coco_api is None:
            # Without ann_file the parent builds the ground truth from the data samples.
            from mmengine.logging import MMLogger

            _, gts = zip(*results)
            # COCO reads the json into memory, so a temporary copy can go at once.
            with tempfile.TemporaryDirectory() as scratch:
                prefix = self.outfile_prefix or scratch
                self._coco_api = _EmptyResultsCOCO(self.gt_to_coco_json(gt_dicts=gts, outfile_prefix=f"{prefix}/gt"))
            MMLogger.get_current_instance().info("converted the ground truth to COCO format")
        return super().compute_metrics(results)
