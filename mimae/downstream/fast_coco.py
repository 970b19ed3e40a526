"""COCO evaluation with a choice of backend: pycocotools or faster-coco-eval.

faster-coco-eval (``COCOeval_faster``) matches and accumulates in C++ and keeps the
pycocotools interface that mmdet 3.3.0's ``CocoMetric`` drives (``params``,
``evaluate``, ``accumulate``, ``summarize``, ``stats``, ``eval['precision']``).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from mmdet.evaluation.metrics import coco_metric
from mmdet.registry import METRICS

from .metrics import SafeCocoMetric

BACKENDS = ("pycocotools", "faster_coco_eval")

# mmdet's CocoMetric.compute_metrics builds its evaluator from the module-level name
# `COCOeval`; the lock keeps two metrics in one process from swapping it at the same time.
_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def _coco_eval_class(evaluator: type) -> Iterator[None]:
    """Make mmdet's ``CocoMetric`` build ``evaluator`` instead of pycocotools' COCOeval, then restore it."""
    with _SWAP_LOCK:
        original = coco_metric.COCOeval
        coco_metric.COCOeval = evaluator
        try:
            yield
        finally:
            coco_metric.COCOeval = original


@METRICS.register_module()
class FastCocoMetric(SafeCocoMetric):
    """:class:`SafeCocoMetric` whose AP and AR come from ``backend``.

    With ``backend='faster_coco_eval'`` the AP and AR are those of pycocotools for the same
    predictions (``tests/test_fast_coco.py`` checks the demo validation set). One known
    difference: faster-coco-eval reads AP at the largest ``proposal_nums`` entry where
    pycocotools reads ``mAP`` at 100 detections, so the two agree only while every image
    has at most 100 detections (Mask R-CNN's ``max_per_img`` in the recipes).

    Args:
        backend: ``'faster_coco_eval'`` (default) or ``'pycocotools'``.
        *args, **kwargs: the arguments of mmdet's ``CocoMetric``. ``use_mp_eval`` works
            only with ``backend='pycocotools'``.
    """

    def __init__(self, *args, backend: str = "faster_coco_eval", **kwargs) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
        if backend == "faster_coco_eval" and kwargs.get("use_mp_eval", False):
            raise ValueError("use_mp_eval=True selects mmdet's multi-process pycocotools evaluator; "
                             "set backend='pycocotools' or use_mp_eval=False")
        super().__init__(*args, **kwargs)
        self.backend = backend

    def compute_metrics(self, results: list) -> dict[str, float]:
        if self.backend == "pycocotools":
            return super().compute_metrics(results)
        from faster_coco_eval import COCOeval_faster

        with _coco_eval_class(COCOeval_faster):
            return super().compute_metrics(results)
