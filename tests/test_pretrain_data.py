import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pretrain.datasets import ImageFolder
from pretrain.transforms import LoadImagePIL

DEMO_IMAGES = "data/demo/coco/images"


def _folder_with_bad_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(p.name for p in Path(DEMO_IMAGES).glob("*.jpg"))[:3]:
        shutil.copy(f"{DEMO_IMAGES}/{name}", folder / name)
    data = (folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_bad_images_named_before_training(tmp_path):
    folder = _folder_with_bad_files(tmp_path)
    with pytest.raises(ValueError) as err:
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"), verify="full")
    message = str(err.value)
    assert "2 of 5 images cannot be used" in message
    assert "truncated.jpg" in message
    assert "empty.jpg: empty file (0 bytes)" in message
    assert "on_bad_image='skip'" in message


def test_bad_images_skipped_with_count(tmp_path):
    folder = _folder_with_bad_files(tmp_path)
    dataset = ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"),
                          verify="full", on_bad_image="skip")
    assert len(dataset) == 3
    assert not any("truncated" in item["img_path"] or "empty" in item["img_path"]
                   for item in dataset.data_list)


def test_empty_folder_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"))


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="nothing"))


def test_grayscale_and_cmyk_decode_to_rgb(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "gray.png")
    Image.new("CMYK", (20, 10), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    loader = LoadImagePIL()
    for name in ("gray.png", "cmyk.jpg"):
        img = loader(dict(img_path=str(tmp_path / name)))["img"]
        assert img.mode == "RGB"
        assert img.size == (20, 10)


def test_decode_failure_returns_none_for_refetch(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    loader = LoadImagePIL()
    assert loader(dict(img_path=str(tmp_path / "broken.jpg"))) is None
    assert loader.num_failed == 1


def test_coco_json_selects_training_split():
    dataset = ImageFolder(data_root="data/demo/coco", data_prefix=dict(img_path="images"),
                          ann_file="annotations/instances_train.json", verify="none")
    assert len(dataset) == 30
    assert torch.tensor([item["img_path"].endswith(".jpg") for item in dataset.data_list]).all()
