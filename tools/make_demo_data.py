#!/usr/bin/env python3
"""Build the redistributable demo data set under data/demo from real images.

COCO: keep the COCO 2017 images whose Flickr licence allows redistribution
(licence ids 4-7), copy the JPEG files unchanged and write a train/val split
of their official annotations. ADE20K: copy the 3 SceneParse150 validation
images, their annotation PNGs and objectInfo150.txt unchanged.
Then write ATTRIBUTION.md and SHA256SUMS.

Files are copied byte for byte because the Attribution-NoDerivs licence
(id 6) does not allow adaptations, so no image is re-encoded or resized.
The output is deterministic: the same source gives byte-identical files.

Usage: python tools/make_demo_data.py --src DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

# COCO licence ids (the `licenses` block of the COCO 2017 json) without a
# NonCommercial clause, so unmodified copies may be redistributed:
# 4 Attribution, 5 Attribution-ShareAlike, 6 Attribution-NoDerivs (all
# Creative Commons 2.0), 7 No known copyright restrictions (Flickr Commons).
REDISTRIBUTABLE_LICENSE_IDS = frozenset({4, 5, 6, 7})

# Sorted by image id, the image at index i goes to val when i % 4 == 3.
VAL_EVERY = 4
VAL_REMAINDER = 3

COCO_SOURCE_JSON = Path("coco128/annotations/instances_train2017.json")
COCO_SOURCE_IMAGES = Path("coco128/train2017")
COCO128_REPO_URL = "https://github.com/developer0hye/COCO128"
COCO128_COMMIT = "47a3de30aaf7ad1c02105bd80598fb03ac0d0789"
COCO_TERMS_URL = (
    "https://github.com/cocodataset/cocodataset.github.io/blob/"
    "146df712f0a3168e83462c75344926153b398e8e/dataset/termsofuse.htm"
)

ADE_SOURCE_ROOT = Path("ade20k_mini/ADEChallengeData2016")
ADE_IMAGE_DIR = Path("images/validation")
ADE_ANNOTATION_DIR = Path("annotations/validation")
ADE_CLASS_FILE = "objectInfo150.txt"
ADE_NUM_CLASSES = 150
SCENEPARSING_REPO_URL = "https://github.com/CSAILVision/sceneparsing"
SCENEPARSING_COMMIT = "e20222964c58eba41d8986d45d652d93adc234a5"
ADE_LICENSE_NAME = 'BSD-3-Clause, "Copyright (c) 2019, MIT CSAIL Computer Vision"'
ADE_LICENSE_URL = f"{SCENEPARSING_REPO_URL}/blob/{SCENEPARSING_COMMIT}/LICENSE"
# Source of the ADE20K copyright note quoted in ATTRIBUTION.md.
ADE20K_METADATA_URL = (
    "https://github.com/CSAILVision/ADE20K/blob/"
    "df5ee67bfe143f3e0cbd5d3929aeeb817a256cbc/dataset/ADE20K_2021_17_01/images/"
    "ADE/training/urban/street/ADE_train_00016869.json"
)

# Files that document the data set, so SHA256SUMS does not list them.
ATTRIBUTION_NAME = "ATTRIBUTION.md"
CHECKSUMS_NAME = "SHA256SUMS"


@dataclass(frozen=True)
class ImageCredit:
    """One row of the ATTRIBUTION.md image table."""

    local_path: str
    dataset: str
    original_urls: tuple[str, ...]
    license_name: str
    license_url: str


@dataclass
class CocoSummary:
    train_images: int
    val_images: int
    train_annotations: int
    val_annotations: int
    train_crowd_annotations: int
    val_crowd_annotations: int
    license_counts: dict[str, int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src",
        type=Path,
        required=True,
        help="folder with coco128/ (train2017/ and annotations/instances_train2017.json of the COCO128 "
             "repository named in data/demo/ATTRIBUTION.md) and ade20k_mini/ADEChallengeData2016/ "
             "(images/validation and annotations/validation from the sceneparsing repository's sampleData)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "data" / "demo",
        help="output folder (default: data/demo in the repository); its coco/ and ade20k/ subfolders are replaced",
    )
    return parser.parse_args(argv)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_unchanged(src: Path, dst: Path) -> None:
    """Copy the bytes of src to dst and verify the copy by its SHA-256."""
    if not src.is_file():
        raise FileNotFoundError(f"source file not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    # copyfile copies content only, so the read-only mode of the source
    # files does not carry over and a rerun can overwrite the output.
    shutil.copyfile(src, dst)
    if sha256_of(src) != sha256_of(dst):
        raise RuntimeError(f"copy of {src} to {dst} differs from the source")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")


def split_coco_images(images: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split image records, sorted by id, into (train, val)."""
    ordered = sorted(images, key=lambda image: image["id"])
    train = [image for index, image in enumerate(ordered) if index % VAL_EVERY != VAL_REMAINDER]
    val = [image for index, image in enumerate(ordered) if index % VAL_EVERY == VAL_REMAINDER]
    return train, val


def check_image_size(path: Path, width: int, height: int) -> None:
    with Image.open(path) as image:
        if image.size != (width, height):
            raise ValueError(
                f"{path}: image size {image.size} does not match the json's (width, height) = ({width}, {height})"
            )


def build_coco(src: Path, out: Path) -> tuple[CocoSummary, list[ImageCredit], list[str]]:
    """Copy the redistributable COCO images and write the train/val jsons.

    Returns the summary, one credit per image and the paths of the json
    files, relative to out.
    """
    source_json = src / COCO_SOURCE_JSON
    if not source_json.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {source_json}; check --src")
    coco = json.loads(source_json.read_text(encoding="utf-8"))

    licenses = {license["id"]: license for license in coco["licenses"]}
    missing_ids = REDISTRIBUTABLE_LICENSE_IDS - licenses.keys()
    if missing_ids:
        raise ValueError(f"{source_json}: licences {sorted(missing_ids)} are missing from the licenses block")

    redistributable_images = [image for image in coco["images"] if image["license"] in REDISTRIBUTABLE_LICENSE_IDS]
    if not redistributable_images:
        raise ValueError(f"{source_json}: no image has a licence id in {sorted(REDISTRIBUTABLE_LICENSE_IDS)}")
    train_images, val_images = split_coco_images(redistributable_images)

    coco_out = out / "coco"
    image_dir = coco_out / "images"
    credits = []
    for image in sorted(redistributable_images, key=lambda record: record["id"]):
        source_image = src / COCO_SOURCE_IMAGES / image["file_name"]
        target_image = image_dir / image["file_name"]
        copy_unchanged(source_image, target_image)
        check_image_size(target_image, image["width"], image["height"])
        license = licenses[image["license"]]
        credits.append(
            ImageCredit(
                local_path=target_image.relative_to(out).as_posix(),
                dataset="COCO 2017 train2017",
                original_urls=(image["flickr_url"], image["coco_url"]),
                license_name=license["name"],
                license_url=license["url"],
            )
        )

    category_ids = {category["id"] for category in coco["categories"]}
    json_paths = []
    counts = {}
    for split, split_images in (("train", train_images), ("val", val_images)):
        image_ids = {image["id"] for image in split_images}
        annotations = [annotation for annotation in coco["annotations"] if annotation["image_id"] in image_ids]
        if not annotations:
            raise ValueError(f"COCO {split} split has no annotations; change the split rule")
        unknown = {annotation["category_id"] for annotation in annotations} - category_ids
        if unknown:
            raise ValueError(f"COCO {split} annotations use unknown category ids {sorted(unknown)}")

        split_json = {
            "info": coco["info"],
            "licenses": coco["licenses"],
            "categories": coco["categories"],
            "images": split_images,
            "annotations": annotations,
        }
        json_path = coco_out / "annotations" / f"instances_{split}.json"
        write_json(json_path, split_json)
        json_paths.append(json_path.relative_to(out).as_posix())
        counts[split] = (
            len(split_images),
            len(annotations),
            sum(1 for annotation in annotations if annotation["iscrowd"] == 1),
        )

    license_counts = {}
    for image in redistributable_images:
        name = licenses[image["license"]]["name"]
        license_counts[name] = license_counts.get(name, 0) + 1

    summary = CocoSummary(
        train_images=counts["train"][0],
        val_images=counts["val"][0],
        train_annotations=counts["train"][1],
        val_annotations=counts["val"][1],
        train_crowd_annotations=counts["train"][2],
        val_crowd_annotations=counts["val"][2],
        license_counts=dict(sorted(license_counts.items())),
    )
    return summary, credits, json_paths


def build_ade20k(src: Path, out: Path) -> tuple[int, list[ImageCredit], list[str]]:
    """Copy the ADE20K images, annotation PNGs and class list unchanged.

    Returns the number of images, one credit per image or annotation PNG,
    and the path of the copied class list, relative to out.
    """
    source_root = src / ADE_SOURCE_ROOT
    target_root = out / "ade20k" / "ADEChallengeData2016"
    source_images = sorted((source_root / ADE_IMAGE_DIR).glob("*.jpg"))
    if not source_images:
        raise FileNotFoundError(f"no ADE20K images found in {source_root / ADE_IMAGE_DIR}; check --src")

    credits = []
    for source_image in source_images:
        source_annotation = source_root / ADE_ANNOTATION_DIR / f"{source_image.stem}.png"
        target_image = target_root / ADE_IMAGE_DIR / source_image.name
        target_annotation = target_root / ADE_ANNOTATION_DIR / source_annotation.name
        copy_unchanged(source_image, target_image)
        copy_unchanged(source_annotation, target_annotation)
        check_ade_annotation(target_image, target_annotation)

        # The sceneparsing repository keeps these files in sampleData/images
        # and sampleData/annotations.
        for local, kind in ((target_image, "images"), (target_annotation, "annotations")):
            credits.append(
                ImageCredit(
                    local_path=local.relative_to(out).as_posix(),
                    dataset="ADE20K SceneParse150 validation",
                    original_urls=(
                        f"{SCENEPARSING_REPO_URL}/blob/{SCENEPARSING_COMMIT}/sampleData/{kind}/{local.name}",
                    ),
                    license_name=ADE_LICENSE_NAME,
                    license_url=ADE_LICENSE_URL,
                )
            )

    class_file = target_root / ADE_CLASS_FILE
    copy_unchanged(source_root / ADE_CLASS_FILE, class_file)
    return len(source_images), credits, [class_file.relative_to(out).as_posix()]


def check_ade_annotation(image_path: Path, annotation_path: Path) -> None:
    """Raise ValueError unless the annotation matches its image in size and contains labels 0..150."""
    with Image.open(image_path) as image, Image.open(annotation_path) as annotation:
        if annotation.size != image.size:
            raise ValueError(f"{annotation_path}: size {annotation.size} differs from image size {image.size}")
        labels = np.asarray(annotation)
    if labels.ndim != 2 or int(labels.max()) > ADE_NUM_CLASSES:
        raise ValueError(
            f"{annotation_path}: expected a single-channel label map with values 0..{ADE_NUM_CLASSES}, "
            f"got shape {labels.shape} and maximum {int(labels.max())}"
        )


def list_data_files(out: Path) -> list[Path]:
    """Return every data file under out, sorted, without the documentation files."""
    skipped = {out / ATTRIBUTION_NAME, out / CHECKSUMS_NAME}
    return sorted(path for path in out.rglob("*") if path.is_file() and path not in skipped)


def format_size(num_bytes: int) -> str:
    return f"{num_bytes} bytes ({num_bytes / 1e6:.2f} MB)"


def write_attribution(
    out: Path,
    credits: list[ImageCredit],
    other_files: list[str],
    coco_summary: CocoSummary,
    total_bytes: int,
    file_count: int,
) -> None:
    coco_image_count = coco_summary.train_images + coco_summary.val_images
    license_lines = [f"  - {name}: {count}" for name, count in coco_summary.license_counts.items()]
    lines = [
        "# Demo data: sources and licences",
        "",
        "This folder is generated by `tools/make_demo_data.py`. Do not edit it by hand.",
        "",
        f"Total size: {format_size(total_bytes)} in {file_count} data files, "
        f"not counting this file and `{CHECKSUMS_NAME}`.",
        "",
        "All image files and ADE20K annotation PNGs were copied unmodified (byte for byte) "
        f"from their sources. `{CHECKSUMS_NAME}` lists their SHA-256 checksums.",
        "",
        "## COCO",
        "",
        f"- {coco_image_count} images from COCO 2017 train2017, selected because their Flickr licence "
        "in the COCO json is one of ids 4-7:",
        *license_lines,
        f"- The images and the annotation file came via {COCO128_REPO_URL} at commit "
        f"`{COCO128_COMMIT}` (`train2017/` and `annotations/instances_train2017.json`), "
        "a 128-image subset of COCO train2017 with its official annotations.",
        "- `coco/annotations/instances_train.json` and `instances_val.json` split that "
        "annotation file: they keep its `info`, `licenses` and all 80 `categories`, and each "
        "kept image record and all of its annotations (including `iscrowd=1` RLE regions) "
        "with unchanged values. Sorted by image id, every 4th image (index % 4 == 3) is in val.",
        "- The COCO annotations belong to the COCO Consortium and are licensed under the "
        "Creative Commons Attribution 4.0 License (CC BY 4.0), according to the COCO terms of use "
        f"(cocodataset.org, source: {COCO_TERMS_URL}). "
        "The same terms say that the COCO Consortium does not own the copyright of the images, "
        "and that use of the images must follow the Flickr Terms of Use.",
        "- Each image has the licence that its COCO record gives. The COCO json records "
        "the Flickr image URL but not the photographer's name or the Flickr photo page.",
        "",
        "## ADE20K",
        "",
        f"- The images, annotation PNGs and `{ADE_CLASS_FILE}` came from {SCENEPARSING_REPO_URL} "
        f"at commit `{SCENEPARSING_COMMIT}` (`sampleData/images/`, `sampleData/annotations/` "
        f"and `{ADE_CLASS_FILE}`). That repository is licensed under BSD-3-Clause, "
        '"Copyright (c) 2019, MIT CSAIL Computer Vision".',
        "- ADE20K's own per-image metadata carries this note: \"Image might be subject to "
        'copyright. Use only for non-commercial research and educational purposes." '
        f"(quoted from {ADE20K_METADATA_URL}). "
        "The metadata of these three validation images was not available to check, "
        "so the note is assumed to apply to them too.",
        "- There is no ADE20K training split here, and the validation files are not duplicated. "
        "A config that needs a training split can point it at `images/validation` and "
        "`annotations/validation`.",
        "",
        "## Image files",
        "",
        "| local path | source data set | original URL | licence | licence URL |",
        "|---|---|---|---|---|",
    ]
    for credit in credits:
        urls = "<br>".join(credit.original_urls)
        lines.append(
            f"| {credit.local_path} | {credit.dataset} | {urls} | {credit.license_name} | {credit.license_url} |"
        )
    lines += [
        "",
        "## Other data files",
        "",
        "| local path | source |",
        "|---|---|",
    ]
    for path in other_files:
        if path.startswith("coco/"):
            source = "split of the COCO 2017 annotations described above, CC BY 4.0"
        else:
            source = f"{SCENEPARSING_REPO_URL} at `{SCENEPARSING_COMMIT}`, {ADE_LICENSE_NAME}"
        lines.append(f"| {path} | {source} |")

    (out / ATTRIBUTION_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_checksums(out: Path, data_files: list[Path]) -> None:
    """Write SHA256SUMS in the format that `sha256sum -c` reads, from inside out."""
    lines = [f"{sha256_of(path)}  {path.relative_to(out).as_posix()}" for path in data_files]
    (out / CHECKSUMS_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src = args.src.resolve()
    out = args.out.resolve()
    if not src.is_dir():
        print(f"error: source folder not found: {src}; pass --src", file=sys.stderr)
        return 1

    # Replace earlier output, so files dropped from the selection do not linger.
    for generated in (out / "coco", out / "ade20k"):
        if generated.exists():
            shutil.rmtree(generated)
    out.mkdir(parents=True, exist_ok=True)

    coco_summary, coco_credits, coco_jsons = build_coco(src, out)
    ade_image_count, ade_credits, ade_files = build_ade20k(src, out)

    data_files = list_data_files(out)
    total_bytes = sum(path.stat().st_size for path in data_files)
    write_attribution(
        out,
        coco_credits + ade_credits,
        coco_jsons + ade_files,
        coco_summary,
        total_bytes,
        len(data_files),
    )
    write_checksums(out, data_files)

    print(f"COCO images: {coco_summary.train_images} train, {coco_summary.val_images} val")
    print(
        f"COCO annotations: {coco_summary.train_annotations} train "
        f"({coco_summary.train_crowd_annotations} iscrowd=1), "
        f"{coco_summary.val_annotations} val ({coco_summary.val_crowd_annotations} iscrowd=1)"
    )
    for name, count in coco_summary.license_counts.items():
        print(f"  {name}: {count} images")
    print(f"ADE20K images: {ade_image_count} validation (no training split)")
    print(f"data files: {len(data_files)}, total {format_size(total_bytes)}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
