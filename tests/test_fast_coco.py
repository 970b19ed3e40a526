"""FastCocoMetric: faster-coco-eval gives the AP and AR of pycocotools on the demo validation set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faster_coco_eval")

from mmdet.datasets import CocoDataset  # noqa: E402
from mmdet.datasets.api_wrappers import COCO  # noqa: E402

from mimae.downstream.fast_coco import FastCocoMetric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO_VAL_JSON = ROOT / "data/demo/coco/annotations/instances_val.json"


def make_predictions(seed: int = 0) -> list[dict]:
    """Return fixed detections for every demo validation image.

    Each ground-truth object gets a prediction with a random score whose box and mask are
    shifted by a few pixels, and about one in five gets a wrong label. Every image also
    gets two false positives, so the AP values lie strictly between 0 and 1.
    """
    rng = np.random.RandomState(seed)
    coco = COCO(str(COCO_VAL_JSON))
    cat_ids = coco.get_cat_ids(cat_names=CocoDataset.METAINFO["classes"])
    label_of = {cat_id: index for index, cat_id in enumerate(cat_ids)}
    samples = []
    for image in coco.load_imgs(coco.get_img_ids()):
        height, width = image["height"], image["width"]
        bboxes, scores, labels, masks = [], [], [], []
        for ann in coco.load_anns(coco.get_ann_ids(img_ids=[image["id"]])):
            dx, dy = rng.randint(-6, 7, size=2)
            x, y, w, h = ann["bbox"]
            bboxes.append([x + dx, y + dy, x + w + dx, y + h + dy])
            scores.append(rng.uniform(0.05, 1.0))
            label = label_of[ann["category_id"]]
            labels.append(label if rng.uniform() > 0.2 else (label + 1) % len(cat_ids))
            mask = coco.annToMask(ann).astype(bool)
            masks.append(np.roll(mask, shift=(dy, dx), axis=(0, 1)))
        for _ in range(2):
            x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            w, h = rng.uniform(10, width / 2), rng.uniform(10, height / 2)
            bboxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.05, 0.6))
            labels.append(int(rng.randint(len(cat_ids))))
            mask = np.zeros((height, width), dtype=bool)
            mask[int(y):int(y + h), int(x):int(x + w)] = True
            masks.append(mask)
        samples.append(dict(
            img_id=image["id"],
            ori_shape=(height, width),
            pred_instances=dict(
                bboxes=torch.tensor(bboxes, dtype=torch.float32),
                scores=torch.tensor(scores, dtype=torch.float32),
                labels=torch.tensor(labels, dtype=torch.long),
                masks=torch.from_numpy(np.stack(masks)),
            ),
        ))
    return samples


def evaluate(backend: str, samples: list[dict]) -> dict[str, float]:
    metric = FastCocoMetric(ann_file=str(COCO_VAL_JSON), metric=["bbox", "segm"], backend=backend)
    metric.dataset_meta = CocoDataset.METAINFO
    metric.process({}, samples)
    return metric.evaluate(size=len(samples))


def test_backends_give_same_ap_on_demo_val(monkeypatch: pytest.MonkeyPatch) -> None:
    import faster_coco_eval

    built = []

    class RecordingCOCOeval(faster_coco_eval.COCOeval_faster):
        def __init__(self, *args, **kwargs) -> None:
            built.append(kwargs.get("iouType", args[2] if len(args) > 2 else None))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(faster_coco_eval, "COCOeval_faster", RecordingCOCOeval)
    samples = make_predictions()
    reference = evaluate("pycocotools", samples)
    fast = evaluate("faster_coco_eval", samples)

    assert built == ["bbox", "segm"]
    assert sorted(fast) == sorted(reference)
    for kind in ("bbox", "segm"):
        assert 0.0 < reference[f"coco/{kind}_mAP"] < 1.0
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, abs=1e-3), key


def test_fast_backend_reports_zero_detections(tmp_path: Path) -> None:
    ground_truth = json.loads(COCO_VAL_JSON.read_text())
    image = ground_truth["images"][0]
    one_image = dict(ground_truth, images=[image],
                     annotations=[a for a in ground_truth["annotations"] if a["image_id"] == image["id"]])
    ann_file = tmp_path / "one_image.json"
    ann_file.write_text(json.dumps(one_image))
    metric = FastCocoMetric(ann_file=str(ann_file), metric=["bbox", "segm"])
    metric.dataset_meta = CocoDataset.METAINFO
    height, width = image["height"], image["width"]
    empty = dict(bboxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long),
                 masks=torch.zeros(0, height, width, dtype=torch.bool))

    metric.process({}, [dict(img_id=image["id"], ori_shape=(height, width), pred_instances=empty)])
    results = metric.evaluate(size=1)

    for kind in ("bbox", "segm"):
        for suffix in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"):
            assert f"coco/{kind}_{suffix}" in results, (kind, suffix)
            # COCOeval reports -1 for an area range without ground truth, as pycocotools does.
            assert results[f"coco/{kind}_{suffix}"] in (0.0, -1.0), (kind, suffix)
        assert results[f"coco/{kind}_mAP"] == 0.0


def test_fast_backend_restores_pycocotools_class() -> None:
    from mmdet.evaluation.metrics import coco_metric

    original = coco_metric.COCOeval
    evaluate("faster_coco_eval", make_predictions()[:2])

    assert coco_metric.COCOeval is original


def test_unknown_backend_rejected() -> None:
    with pytest.raises(ValueError, match="unknown COCO evaluation backend"):
        FastCocoMetric(ann_file=str(COCO_VAL_JSON), backend="lvis")


def test_fast_backend_rejects_multiprocess_eval() -> None:
    with pytest.raises(ValueError, match="use_mp_eval"):
        FastCocoMetric(ann_file=str(COCO_VAL_JSON), use_mp_eval=True)
