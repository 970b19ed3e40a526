"""Downscaled copies for pretraining (``ImageFolder(downscale=...)``) on the bundled photos."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.datasets import ImageFolder
from pretrain.downscale import default_cache_dir, downscale_images

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO_ROOT / "data/demo/coco/images"


@pytest.fixture()
def photos(tmp_path):
    """Three demo photos (one in a sub-folder), a small image and an undecodable file."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = sorted(os.listdir(DEMO_IMAGES))[:3]
    shutil.copy(DEMO_IMAGES / names[0], folder / names[0])
    shutil.copy(DEMO_IMAGES / names[1], folder / names[1])
    shutil.copy(DEMO_IMAGES / names[2], folder / "sub" / names[2])
    Image.new("RGB", (100, 60), (10, 200, 30)).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


def _paths(dataset: ImageFolder) -> dict[str, str]:
    items = [dataset.get_data_info(index) for index in range(len(dataset))]
    return {os.path.basename(item["img_path"]): item["img_path"] for item in items}


def test_copy_size_and_content(photos, tmp_path):
    cache = tmp_path / "cache"
    dataset = ImageFolder(data_root=str(photos), verify="none", downscale=dict(short_side=96, cache_dir=str(cache)))
    paths = _paths(dataset)
    assert len(paths) == 5
    copies = [p for p in paths.values() if p.startswith(str(cache))]
    assert len(copies) == 3
    assert any(os.sep + "sub" + os.sep in p for p in copies)  # relative layout kept
    for copy in copies:
        source = photos / os.path.relpath(copy, cache / "s96-q95")
        with Image.open(copy) as small, Image.open(source) as original:
            assert small.format == "JPEG"
            assert min(small.size) == 96
            assert small.width / small.height == pytest.approx(original.width / original.height, rel=0.02)
            # Same picture, same orientation: close to a plain resize of the decoded source.
            # The copy decodes at a reduced DCT scale first, so on a zebra photo it differs by
            # about 9 levels on average. Another photo differs by about 70, a mirrored one by 50.
            expected = np.asarray(original.convert("RGB").resize(small.size, Image.BICUBIC), dtype=np.float32)
            difference = np.abs(np.asarray(small.convert("RGB"), dtype=np.float32) - expected).mean()
            assert difference < 20.0, (copy, difference)
            assert os.stat(copy).st_mtime_ns == os.stat(source).st_mtime_ns
    # Not larger than the short side, or not decodable: read in place.
    assert paths["small.png"] == str(photos / "small.png")
    assert paths["broken.jpg"] == str(photos / "broken.jpg")


def test_copy_reused_until_source_changes(photos, tmp_path):
    cache = tmp_path / "cache"
    options = dict(short_side=96, cache_dir=str(cache))
    first = _paths(ImageFolder(data_root=str(photos), verify="none", downscale=options))
    name = sorted(n for n, p in first.items() if p.startswith(str(cache)))[0]
    copy = first[name]
    source_stat = os.stat(photos / name)
    # A copy with the source's modification time is read as it is, not written again.
    Path(copy).write_bytes(b"kept")
    os.utime(copy, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
    ImageFolder(data_root=str(photos), verify="none", downscale=options)
    assert Path(copy).read_bytes() == b"kept"
    # A changed source is copied again.
    os.utime(photos / name, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns + 10**9))
    ImageFolder(data_root=str(photos), verify="none", downscale=options)
    with Image.open(copy) as img:
        assert min(img.size) == 96


def test_worker_processes_same_copies(photos, tmp_path):
    paths = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    serial = downscale_images(paths, str(photos), 80, str(tmp_path / "a"))
    parallel = downscale_images(paths, str(photos), 80, str(tmp_path / "b"), workers=2)
    assert [os.path.relpath(p, tmp_path / "a") if p.startswith(str(tmp_path / "a")) else p for p in serial] == \
        [os.path.relpath(p, tmp_path / "b") if p.startswith(str(tmp_path / "b")) else p for p in parallel]
    for path in serial:
        if path.startswith(str(tmp_path / "a")):
            twin = tmp_path / "b" / os.path.relpath(path, tmp_path / "a")
            assert Path(path).read_bytes() == twin.read_bytes()


def test_default_cache_dir_per_folder(tmp_path):
    first = default_cache_dir(str(tmp_path / "x"))
    assert first.startswith(os.path.expanduser("~/.cache/mimae/downscaled"))
    assert first != default_cache_dir(str(tmp_path / "y"))


def test_new_settings_new_copies(photos, tmp_path):
    """The same cache_dir with another short side or quality never serves the old copies."""
    cache = str(tmp_path / "cache")
    sizes = {}
    for short_side, quality in ((96, 95), (64, 95), (64, 50)):
        paths = _paths(ImageFolder(data_root=str(photos), verify="none",
                                   downscale=dict(short_side=short_side, cache_dir=cache, quality=quality)))
        copy = next(p for p in paths.values() if p.startswith(cache))
        assert f"s{short_side}-q{quality}" in copy
        with Image.open(copy) as img:
            sizes[(short_side, quality)] = (min(img.size), os.path.getsize(copy))
    assert sizes[(96, 95)][0] == 96
    assert sizes[(64, 95)][0] == 64
    assert sizes[(64, 50)][1] < sizes[(64, 95)][1]


def test_cache_inside_folder_rejected(photos):
    with pytest.raises(ValueError, match="inside the image folder"):
        ImageFolder(data_root=str(photos), verify="none", downscale=dict(short_side=96, cache_dir=str(photos / "c")))


def test_unwritable_cache_named(photos, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(OSError, match="set downscale.cache_dir to a writable folder"):
        ImageFolder(data_root=str(photos), verify="none",
                    downscale=dict(short_side=96, cache_dir=str(blocker / "cache")))


def test_dotted_names_inside_folder(photos, tmp_path):
    shutil.copy(photos / "sub" / os.listdir(photos / "sub")[0], photos / "..hidden.jpg")
    paths = _paths(ImageFolder(data_root=str(photos), verify="none",
                               downscale=dict(short_side=96, cache_dir=str(tmp_path / "cache"))))
    assert paths["..hidden.jpg"].startswith(str(tmp_path / "cache"))


def test_mpo_copied_as_jpeg(tmp_path):
    """A JPEG with a multi-picture index (Pillow's MPO) is decoded at a reduced scale and
    written as JPEG at the requested quality."""
    folder = tmp_path / "images"
    folder.mkdir()
    with Image.open(DEMO_IMAGES / sorted(os.listdir(DEMO_IMAGES))[0]) as img:
        img.convert("RGB").save(folder / "phone.jpg", format="MPO", save_all=True,
                                append_images=[img.convert("RGB").resize((64, 48))], quality=95)
    with Image.open(folder / "phone.jpg") as img:
        assert img.format == "MPO"
    [copy] = downscale_images([str(folder / "phone.jpg")], str(folder), 96, str(tmp_path / "cache"), quality=95)
    with Image.open(copy) as small:
        assert small.format == "JPEG"
        assert min(small.size) == 96
        # Quality 95 quantizes the first luminance coefficient with a step of 2. Pillow's
        # default quality 75 uses 8.
        assert small.quantization[0][0] <= 3


@pytest.mark.parametrize("options, message", [
    (dict(size=160), "short_side"),
    (dict(short_side=160, interpolation="bilinear"), "short_side"),
    (dict(short_side=0), "positive"),
    (dict(short_side="160"), "whole number"),
    (dict(short_side=160, quality=0), "quality"),
])
def test_bad_downscale_options(photos, options, message):
    with pytest.raises(ValueError, match=message):
        ImageFolder(data_root=str(photos), verify="none", downscale=options)
