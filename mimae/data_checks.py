"""Checks of training and evaluation data that run before the first iteration.

mmdet and mmseg read most files lazily, so a broken image, label map or annotation
usually surfaces only when a worker first loads it, which may be hours into a run.
Some faults never raise at all: mmdet 3.3's ``CocoDataset.parse_data_info`` drops a box
of an undefined category without a word. The functions here read a data set the way mmdet 3.3, mmseg 1.2 and the
pretraining ``ImageFolder`` will, and sort what they find into two kinds:

* problems that would crash a run or train on wrong targets raise
  :class:`DataCheckError`, naming every file (up to a limit) and the fix;
* faults that the libraries already handle in a defined way (a zero-area box that
  mmdet drops, a grayscale JPEG that the decoder turns into 3 channels) are logged
  once with a count and examples.

``SafeRunner`` calls :func:`check_dataset_config` for every data loader it builds.
From the command line::

    python -m mimae.data_checks CONFIG [--verify full]
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import os.path as osp
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from mmengine.logging import print_log
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VERIFY_MODES = ("none", "header", "full")
# Problems listed in full in an error message; the rest are counted.
MAX_LISTED = 20
# A box may overshoot the image by this many pixels before it is reported.
BORDER_TOLERANCE = 1.0
# EXIF orientations 5 to 8 rotate by 90 degrees, so a decoder that applies them swaps width and height.
EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
JPEG_END = b"\xff\xd9"
PNG_END = b"IEND\xaeB`\x82"
TAIL_BYTES = 1024


class DataCheckError(ValueError):
    """Data that would stop training or train on wrong targets."""


@dataclass
class DataReport:
    """Findings of one data set: ``problems`` are fatal, ``notes`` are handled faults."""

    name: str
    problems: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    num_images: int = 0

    def note(self, kind: str, example: str) -> None:
        """Count one handled fault of ``kind`` and keep the first example."""
        self.notes[kind] += 1
        self.examples.setdefault(kind, example)

    def raise_if_failed(self) -> None:
        if not self.problems:
            return
        listed = "\n".join(f"  {problem}" for problem in self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataCheckError(
            f"data check of {self.name} found {len(self.problems)} problem(s) that would stop "
            f"training or corrupt its targets; fix them before training:\n{listed}{tail}\n"
            "(set data_check=dict(verify='none') in the config to skip these checks)"
        )

    def log(self, logger: str = "current") -> None:
        """Log the handled faults at WARNING and a one-line summary at INFO."""
        for kind, count in sorted(self.notes.items()):
            print_log(f"data check of {self.name}: {count} x {kind} (first: {self.examples[kind]})",
                      logger=logger, level=30)
        print_log(f"data check of {self.name}: {self.num_images} images checked, "
                  f"{sum(self.notes.values())} handled faults, {len(self.problems)} problems",
                  logger=logger)


# ---------------------------------------------------------------------------------------
# image files


@dataclass
class ImageInfo:
    """Result of reading one image file's header, or of decoding it in full."""

    path: str
    problem: str | None = None
    size: tuple[int, int] | None = None  # (width, height) as the decoder will return it
    mode: str | None = None
    stored_size: tuple[int, int] | None = None  # (width, height) of the pixel array in the file


def _has_end_marker(path: str, suffix: str) -> bool | None:
    """Return whether a JPEG or PNG ends with its end marker, or None for other formats."""
    if suffix in (".jpg", ".jpeg"):
        marker = JPEG_END
    elif suffix == ".png":
        marker = PNG_END
    else:
        return None
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
        tail = f.read()
    return marker in tail


def inspect_image(path: str, verify: str = "header", apply_exif: bool = True) -> ImageInfo:
    """Read the header of one image and decode it when needed.

    ``header`` opens the header and checks that a JPEG or PNG ends with its end marker.
    A file without the marker is decoded in full, so only a truncated file is reported.
    ``full`` decodes every file. ``apply_exif`` swaps width and height for EXIF
    orientations 5 to 8, as OpenCV's ``IMREAD_COLOR`` (mmcv's ``'color'``) does.
    """
    info = ImageInfo(path)
    if not osp.isfile(path):
        info.problem = "file not found"
        return info
    if osp.getsize(path) == 0:
        info.problem = "empty file (0 bytes)"
        return info
    decode = verify == "full"
    if not decode and _has_end_marker(path, osp.splitext(path)[1].lower()) is False:
        decode = True
    truncated_setting = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # another library may have relaxed it
    try:
        with Image.open(path) as img:
            info.mode = img.mode
            info.stored_size = img.size
            orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
            if decode:
                img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        info.problem = f"cannot decode ({err})"
        return info
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_setting
    width, height = info.stored_size
    if apply_exif and orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    info.size = (width, height)
    return info


def find_bad_images(paths: list[str], mode: str) -> list[tuple[str, str]]:
    """Return ``(path, reason)`` for every file that is missing, empty or fails to decode.

    ``none`` checks existence and size only; ``header`` and ``full`` are those of
    :func:`inspect_image`.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {mode!r}")
    bad = []
    for path in paths:
        if mode == "none":
            if not osp.isfile(path):
                bad.append((path, "file not found"))
            elif osp.getsize(path) == 0:
                bad.append((path, "empty file (0 bytes)"))
            continue
        info = inspect_image(path, mode)
        if info.problem:
            bad.append((path, info.problem))
    return bad


def _note_color_mode(report: DataReport, info: ImageInfo) -> None:
    if info.mode not in (None, "RGB"):
        report.note(f"images in PIL mode {info.mode}, decoded to 3-channel color by the loader", info.path)


def _image_problem(info: ImageInfo) -> str:
    return f"{info.path}: {info.problem}; replace the file or remove it (and its annotations) from the data set"


# ---------------------------------------------------------------------------------------
# COCO detection and instance segmentation


def _load_json(path: str, report: DataReport):
    if not osp.isfile(path):
        report.problems.append(f"{path}: annotation file not found; check data_root and ann_file")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        report.problems.append(f"{path}: not valid JSON ({err}); re-export or re-download the annotation file")
    except UnicodeDecodeError as err:
        report.problems.append(f"{path}: not UTF-8 text ({err}); pass the COCO json, not another file")
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_coco_structure(data, ann_file: str, report: DataReport) -> bool:
    if not isinstance(data, dict):
        report.problems.append(f"{ann_file}: top level is {type(data).__name__}, expected a COCO object "
                               "with 'images', 'annotations' and 'categories'")
        return False
    ok = True
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            report.problems.append(f"{ann_file}: '{key}' is missing or not a list; a COCO instances file needs it")
            ok = False
    if ok and not data["images"]:
        report.problems.append(f"{ann_file}: 'images' is empty; nothing to train or evaluate on")
        ok = False
    return ok


def _coco_images(data, ann_file: str, report: DataReport) -> dict:
    images = {}
    for index, image in enumerate(data["images"]):
        where = f"{ann_file}, images[{index}]"
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            report.problems.append(f"{where}: needs 'id' and 'file_name'; fix the entry")
            continue
        if not all(isinstance(image.get(key), int) and image[key] > 0 for key in ("width", "height")):
            report.problems.append(f"{where} ({image['file_name']}): 'width' and 'height' must be positive "
                                   f"integers, got {image.get('width')!r} x {image.get('height')!r}")
            continue
        if image["id"] in images:
            report.problems.append(f"{where} ({image['file_name']}): duplicate image id {image['id']}; "
                                   "give every image its own id")
            continue
        images[image["id"]] = image
    return images


def _coco_categories(data, ann_file: str, report: DataReport) -> dict:
    categories = {}
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), str):
            report.problems.append(f"{ann_file}, categories[{index}]: needs 'id' and 'name'; fix the entry")
            continue
        categories[category["id"]] = category["name"]
    return categories


def _check_coco_annotation(ann, index: int, ann_file: str, images: dict, category_ids: set,
                           class_names: set | None, category_names: dict, with_mask: bool,
                           report: DataReport) -> None:
    where = f"{ann_file}, annotations[{index}]"
    if not isinstance(ann, dict):
        report.problems.append(f"{where}: not an object")
        return
    where = f"{where} (id {ann.get('id')})"
    missing = [key for key in ("id", "image_id", "category_id", "bbox", "area") if key not in ann]
    if missing:
        report.problems.append(f"{where}: missing {', '.join(missing)}; pycocotools and mmdet read these keys "
                               "for every annotation")
        return
    image = images.get(ann["image_id"])
    if image is None:
        report.problems.append(f"{where}: image_id {ann['image_id']} is not in 'images'; "
                               "add the image or delete the annotation")
        return
    where = f"{where}, image {image['file_name']}"
    if ann["category_id"] not in category_ids:
        report.problems.append(f"{where}: category_id {ann['category_id']} is not defined in 'categories' "
                               f"(defined: {sorted(category_ids)[:10]}...); fix the id or add the category")
        return
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        report.problems.append(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        return
    if not _is_number(ann["area"]):
        report.problems.append(f"{where}: area must be a finite number, got {ann['area']!r}")
        return
    if ann.get("ignore", False):
        return
    if class_names is not None and category_names.get(ann["category_id"]) not in class_names:
        report.note("annotations of a category outside the dataset's classes, dropped by mmdet", where)
        return
    x, y, w, h = bbox
    width, height = image["width"], image["height"]
    overlap_w = min(x + w, width) - max(x, 0)
    overlap_h = min(y + h, height) - max(y, 0)
    if overlap_w <= 0 or overlap_h <= 0:
        report.note("boxes entirely outside their image, dropped by mmdet", f"{where}: bbox {bbox}")
        return
    if ann["area"] <= 0 or w < 1 or h < 1:
        report.note("boxes narrower or lower than 1 px or with area <= 0, dropped by mmdet",
                    f"{where}: bbox {bbox}")
        return
    tolerance = BORDER_TOLERANCE
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        report.note(f"boxes extending more than {tolerance:g} px past the image border, kept; mmdet's Resize "
                    "clips them to the image (clip_object_border=True by default)",
                    f"{where}: bbox {bbox} in {width} x {height}")
    if with_mask and not ann.get("iscrowd", 0):
        _check_coco_segmentation(ann.get("segmentation"), where, report)


def _check_coco_segmentation(segmentation, where: str, report: DataReport) -> None:
    if not segmentation:
        # mmdet 3.3 stores no mask for an empty segmentation, and LoadAnnotations(with_mask=True)
        # then fails with KeyError 'mask' when the image is first loaded.
        report.problems.append(f"{where}: segmentation is empty or missing, which makes mmdet's "
                               "LoadAnnotations(with_mask=True) fail with KeyError 'mask'; add the polygon "
                               "or RLE, mark the annotation iscrowd=1 with an RLE, or delete it")
        return
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                    and all(_is_number(v) for v in p)]
        if not polygons:
            report.note("annotations whose polygons all have fewer than 3 points, ignored by mmdet", where)
    elif not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        report.problems.append(f"{where}: segmentation must be a list of polygons or an RLE dict with "
                               f"'counts' and 'size', got {type(segmentation).__name__}")


def _check_training_images_left(data, images: dict, categories: dict, class_set, filter_empty_gt: bool,
                                min_size: int, ann_file: str, report: DataReport) -> None:
    """Report when mmdet's ``filter_data`` would keep no image at all."""
    annotated = set()
    for ann in data["annotations"]:
        if isinstance(ann, dict) and (class_set is None or categories.get(ann.get("category_id")) in class_set):
            annotated.add(ann.get("image_id"))
    kept = [image for image_id, image in images.items()
            if (not filter_empty_gt or image_id in annotated) and min(image["width"], image["height"]) >= min_size]
    if not kept:
        report.problems.append(
            f"{ann_file}: filter_cfg (filter_empty_gt={filter_empty_gt}, min_size={min_size}) leaves no image "
            f"of {len(images)}, so training would wait forever for a first batch; add annotations of the "
            "dataset's classes or relax filter_cfg")


def _pipeline_steps(pipeline, name: str) -> list[dict]:
    """Return the steps of ``pipeline`` whose type is ``name`` (with or without a scope prefix)."""
    steps = []
    for step in pipeline or []:
        if isinstance(step, dict) and str(step.get("type", "")).split(".")[-1] == name:
            steps.append(step)
    return steps


def _applies_exif(pipeline) -> bool:
    """Return whether the pipeline's image loader rotates by EXIF orientation (mmcv's default ``'color'``)."""
    loaders = _pipeline_steps(pipeline, "LoadImageFromFile")
    color_type = loaders[0].get("color_type", "color") if loaders else "color"
    return "ignore_orientation" not in color_type


def check_coco(ann_file: str, img_dir: str, *, with_mask: bool = False, class_names=None,
               filter_empty_gt: bool = False, min_size: int = 0, verify: str = "header",
               apply_exif: bool = True, name: str = "CocoDataset") -> DataReport:
    """Check a COCO instances json and its images the way mmdet's ``CocoDataset`` will read them.

    ``filter_empty_gt`` and ``min_size`` are those of the dataset's ``filter_cfg`` (training
    sets only): when they leave no image, the run would wait forever, because MMEngine's
    ``InfiniteSampler`` loops over an empty index list without yielding.
    """
    report = DataReport(f"{name} ({ann_file})")
    data = _load_json(ann_file, report)
    if data is None or not _check_coco_structure(data, ann_file, report):
        return report
    images = _coco_images(data, ann_file, report)
    categories = _coco_categories(data, ann_file, report)
    class_set = set(class_names) if class_names else None
    seen_ids = set()
    for index, ann in enumerate(data["annotations"]):
        if isinstance(ann, dict) and "id" in ann:
            if ann["id"] in seen_ids:
                # pycocotools indexes annotations by id, so a duplicate silently replaces the first one.
                report.problems.append(f"{ann_file}, annotations[{index}]: duplicate annotation id {ann['id']}; "
                                       "pycocotools would keep only one of them, so give each its own id")
                continue
            seen_ids.add(ann["id"])
        _check_coco_annotation(ann, index, ann_file, images, set(categories), class_set, categories,
                               with_mask, report)
    if filter_empty_gt or min_size:
        _check_training_images_left(data, images, categories, class_set, filter_empty_gt, min_size, ann_file,
                                    report)
    if verify == "none":
        return report
    for image in images.values():
        info = inspect_image(osp.join(img_dir, image["file_name"]), verify, apply_exif)
        report.num_images += 1
        if info.problem:
            report.problems.append(_image_problem(info))
            continue
        _note_color_mode(report, info)
        expected = (image["width"], image["height"])
        if info.size != expected:
            rotated = info.size != info.stored_size
            reason = (f"EXIF orientation rotates it to {info.size[0]} x {info.size[1]}" if rotated
                      else f"the file is {info.size[0]} x {info.size[1]}")
            fix = ("re-save the image with the rotation applied and update 'width'/'height', or load with "
                   "LoadImageFromFile(color_type='color_ignore_orientation')" if rotated
                   else "correct 'width'/'height' in the json or replace the file")
            report.problems.append(f"{info.path}: the json says {expected[0]} x {expected[1]} but {reason}, "
                                   f"so the annotations would be misplaced; {fix}")
    return report


# ---------------------------------------------------------------------------------------
# semantic segmentation (mmseg BaseSegDataset layout, e.g. ADE20K)


def _list_files(folder: str, suffix: str) -> list[str]:
    names = []
    for root, _, files in os.walk(folder):
        for file_name in files:
            if file_name.endswith(suffix):
                names.append(osp.relpath(osp.join(root, file_name), folder))
    return sorted(names)


def _check_label_values(path: str, num_classes: int, reduce_zero_label: bool, ignore_index: int,
                        image_size, report: DataReport) -> None:
    try:
        with Image.open(path) as label:
            label.load()
            mode, size = label.mode, label.size
            values = np.unique(np.asarray(label))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        report.problems.append(f"{path}: cannot decode label map ({err}); replace the file")
        return
    if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        report.problems.append(f"{path}: label map in PIL mode {mode} has more than one channel; save class "
                               "indices as a single-channel (L or P) PNG")
        return
    if image_size is not None and size != image_size:
        report.problems.append(f"{path}: label map is {size[0]} x {size[1]} but its image is {image_size[0]} x "
                               f"{image_size[1]}; the crops would pair wrong pixels, so regenerate or resize the "
                               "label map with nearest-neighbour sampling")
        return
    # With reduce_zero_label, 0 becomes ignore and 1..C become 0..C-1; raw 255 stays ignored.
    highest = num_classes if reduce_zero_label else num_classes - 1
    ignored = {255} if reduce_zero_label else {ignore_index}
    invalid = [int(v) for v in values if (v < 0 or v > highest) and int(v) not in ignored]
    if invalid:
        report.problems.append(
            f"{path}: label values {invalid[:10]} are outside 0..{highest} and not the ignore index "
            f"{sorted(ignored)[0]} (num_classes={num_classes}, reduce_zero_label={reduce_zero_label}); the loss "
            "fails on them, so fix the label map or the class count"
        )


def check_segmentation(img_dir: str, seg_dir: str | None, *, num_classes: int, img_suffix: str = ".jpg",
                       seg_map_suffix: str = ".png", reduce_zero_label: bool = False, ignore_index: int = 255,
                       ann_file: str = "", verify: str = "header", apply_exif: bool = True,
                       name: str = "BaseSegDataset") -> DataReport:
    """Check images and label maps the way mmseg's ``BaseSegDataset`` will pair and read them.

    Label maps are always decoded, because values outside the classes make the loss
    fail only when the map is first sampled.
    """
    report = DataReport(f"{name} ({img_dir})")
    if ann_file:
        if not osp.isfile(ann_file):
            report.problems.append(f"{ann_file}: split file not found; check data_root and ann_file")
            return report
        with open(ann_file, encoding="utf-8") as f:
            names = [line.strip() + img_suffix for line in f if line.strip()]
    elif not osp.isdir(img_dir):
        report.problems.append(f"{img_dir}: image folder not found; check data_root and data_prefix.img_path")
        return report
    else:
        names = _list_files(img_dir, img_suffix)
    if not names:
        report.problems.append(f"{img_dir}: no images with suffix {img_suffix!r}; point data_prefix.img_path at "
                               "the image folder or set img_suffix")
        return report
    if seg_dir is not None and not osp.isdir(seg_dir):
        report.problems.append(f"{seg_dir}: label map folder not found; check data_prefix.seg_map_path")
        return report
    for name_in_dir in names:
        image_size = None
        report.num_images += 1
        if verify != "none":
            info = inspect_image(osp.join(img_dir, name_in_dir), verify, apply_exif)
            if info.problem:
                report.problems.append(_image_problem(info))
                continue
            _note_color_mode(report, info)
            image_size = info.size
        if seg_dir is None:
            continue
        seg_path = osp.join(seg_dir, name_in_dir[: -len(img_suffix)] + seg_map_suffix)
        if not osp.isfile(seg_path):
            report.problems.append(f"{seg_path}: label map of {name_in_dir} not found; add it or remove the image")
            continue
        if osp.getsize(seg_path) == 0:
            report.problems.append(f"{seg_path}: empty file (0 bytes); replace the label map")
            continue
        _check_label_values(seg_path, num_classes, reduce_zero_label, ignore_index, image_size, report)
    return report


# ---------------------------------------------------------------------------------------
# dispatch on a dataset config


def _join(root: str, path: str) -> str:
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _resolve_dataset_class(dataset_type):
    if inspect.isclass(dataset_type):
        return dataset_type
    from mmengine.registry import DATASETS

    # The registry of the current default scope (mmdet, mmseg or mimae), as Runner builds with.
    with DATASETS.switch_scope_and_registry(None) as registry:
        try:
            return registry.get(dataset_type)
        except KeyError:
            return None


def _class_default(cls, name: str, fallback):
    for klass in cls.__mro__:
        try:
            parameter = inspect.signature(klass.__init__).parameters.get(name)
        except (TypeError, ValueError):
            continue
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return fallback


def _subclass_of(cls, module: str, name: str) -> bool:
    try:
        base = getattr(__import__(module, fromlist=[name]), name)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def check_dataset_config(dataset_cfg, verify: str = "header") -> list[DataReport]:
    """Check the data behind a dataset config and return one report per data set.

    Handles mmdet ``CocoDataset`` and mmseg ``BaseSegDataset`` subclasses and the
    wrappers that hold them (``dataset``/``datasets`` keys). Other types are skipped:
    the pretraining ``ImageFolder`` checks its own files when it is built.
    Raises :class:`DataCheckError` on the first data set with problems.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"data_check.verify must be one of {VERIFY_MODES}, got {verify!r}")
    if verify == "none" or not isinstance(dataset_cfg, dict):
        return []
    reports = []
    for key in ("dataset", "datasets"):
        inner = dataset_cfg.get(key)
        if inner is None:
            continue
        children = inner if isinstance(inner, (list, tuple)) else [inner]
        for child in children:
            reports += check_dataset_config(child, verify)
    cls = _resolve_dataset_class(dataset_cfg.get("type"))
    if cls is None:
        return reports
    paths = [str(dataset_cfg.get(k, "")) for k in ("data_root", "ann_file")]
    paths += [str(v) for v in (dataset_cfg.get("data_prefix") or {}).values()]
    if any("://" in path for path in paths):
        print_log(f"data check skipped for {cls.__name__}: remote paths are not checked", logger="current")
        return reports
    report = None
    if _subclass_of(cls, "mmdet.datasets", "CocoDataset"):
        report = _check_coco_cfg(cls, dataset_cfg, verify)
    elif _subclass_of(cls, "mmseg.datasets", "BaseSegDataset"):
        report = _check_segmentation_cfg(cls, dataset_cfg, verify)
    if report is not None:
        report.raise_if_failed()
        report.log()
        reports.append(report)
    return reports


def _check_coco_cfg(cls, cfg: dict, verify: str) -> DataReport:
    root = cfg.get("data_root", "")
    prefix = cfg.get("data_prefix") or {}
    pipeline = cfg.get("pipeline")
    with_mask = any(step.get("with_mask", False) for step in _pipeline_steps(pipeline, "LoadAnnotations"))
    metainfo = cfg.get("metainfo") or {}
    class_names = metainfo.get("classes") or getattr(cls, "METAINFO", {}).get("classes")
    # mmdet applies filter_cfg to training sets only.
    filter_cfg = {} if cfg.get("test_mode", False) else (cfg.get("filter_cfg") or {})
    return check_coco(_join(root, cfg.get("ann_file", "")), _join(root, prefix.get("img", "")),
                      with_mask=with_mask, class_names=class_names,
                      filter_empty_gt=filter_cfg.get("filter_empty_gt", False), min_size=filter_cfg.get("min_size", 0),
                      verify=verify, apply_exif=_applies_exif(pipeline), name=cls.__name__)


def _check_segmentation_cfg(cls, cfg: dict, verify: str) -> DataReport:
    root = cfg.get("data_root", "")
    prefix = cfg.get("data_prefix") or {}
    metainfo = cfg.get("metainfo") or {}
    classes = metainfo.get("classes") or getattr(cls, "METAINFO", {}).get("classes", ())
    seg_dir = prefix.get("seg_map_path")
    ann_file = cfg.get("ann_file", "")
    return check_segmentation(
        _join(root, prefix.get("img_path", "")),
        _join(root, seg_dir) if seg_dir is not None else None,
        num_classes=len(classes),
        img_suffix=cfg.get("img_suffix", _class_default(cls, "img_suffix", ".jpg")),
        seg_map_suffix=cfg.get("seg_map_suffix", _class_default(cls, "seg_map_suffix", ".png")),
        reduce_zero_label=cfg.get("reduce_zero_label", _class_default(cls, "reduce_zero_label", False)),
        ignore_index=cfg.get("ignore_index", _class_default(cls, "ignore_index", 255)),
        ann_file=_join(root, ann_file) if ann_file else "",
        verify=verify,
        apply_exif=_applies_exif(cfg.get("pipeline")),
        name=cls.__name__,
    )


def main(argv: list[str] | None = None) -> None:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    parser = argparse.ArgumentParser(description="Check the train, val and test data of a config")
    parser.add_argument("config", help="path of the config file")
    parser.add_argument("--verify", choices=VERIFY_MODES[1:],
                        help="'header' reads image headers and decodes only files without an end marker; "
                             "'full' decodes every image (default: what a training run checks, the config's "
                             "data_check.verify, 'header' when unset, and each ImageFolder's own verify)")
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    check_verify = args.verify or (cfg.get("data_check") or {}).get("verify", "header")
    scope = cfg.get("default_scope", "mimae")
    if scope in ("mmdet", "mmseg"):
        __import__(f"{scope}.utils", fromlist=["register_all_modules"]).register_all_modules(False)
    init_default_scope(scope)
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(split)
        if not loader:
            continue
        dataset_cfg = loader.get("dataset")
        check_dataset_config(dataset_cfg, check_verify)
        _build_image_folder(dataset_cfg, args.verify)
    print("data check passed")


def _build_image_folder(dataset_cfg, verify: str | None) -> None:
    """Build a pretraining ``ImageFolder`` config, which checks its files when it is built.

    ``verify`` replaces the config's own ``verify`` unless it is None.
    """
    if not isinstance(dataset_cfg, dict):
        return
    from pretrain.datasets import ImageFolder

    # Wrappers such as ConcatDataset hold their data sets under these keys.
    for key in ("dataset", "datasets"):
        inner = dataset_cfg.get(key)
        for child in inner if isinstance(inner, (list, tuple)) else [inner]:
            _build_image_folder(child, verify)
    cls = _resolve_dataset_class(dataset_cfg.get("type"))
    if isinstance(cls, type) and issubclass(cls, ImageFolder):
        settings = {key: value for key, value in dataset_cfg.items() if key not in ("type", "pipeline")}
        if verify is not None:
            settings["verify"] = verify
        cls(**settings)


if __name__ == "__main__":
    main()
