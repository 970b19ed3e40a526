"""Downscaled copies of training images, written once and read in every epoch.

A photo several times larger than the training crop costs most of its loading time in
JPEG decoding, and on a machine with few CPUs the loader then takes that time from the
training threads. A copy whose shorter side is just large enough for the crops is decoded
by the same pipeline at a fraction of the cost. Copies keep the source's relative path and
file format (JPEG, WEBP, PNG, TIFF, BMP; other formats are stored as PNG data), and carry
the source's modification time, so a changed source is copied again on the next build.
Writes go to a temporary name first and are renamed into place, so processes that build
the same data set at once (one per rank) cannot read a half file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import os.path as osp
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

from mmengine.logging import print_log
from PIL import Image

__all__ = ["default_cache_dir", "downscale_image", "downscale_images"]

# Pillow names a JPEG with a multi-picture index (phone photos with a depth or gain map) MPO.
JPEG_FORMATS = ("JPEG", "MPO")
# Formats written as they are. Any other source (GIF, for one) is stored losslessly as PNG
# data under its own name, and Pillow opens it by content.
KEPT_FORMATS = ("JPEG", "WEBP", "PNG", "TIFF", "BMP")


def default_cache_dir(folder: str) -> str:
    """Return ``~/.cache/mimae/downscaled/<hash of the folder's absolute path>``."""
    digest = hashlib.sha1(osp.abspath(folder).encode()).hexdigest()[:12]
    return osp.join(osp.expanduser("~/.cache/mimae/downscaled"), digest)


def downscale_image(src: str, dst: str, short_side: int, quality: int = 95) -> str:
    """Return the path to read for ``src``.

    That is ``dst``, holding a copy of ``src`` whose shorter side is ``short_side``. It is
    ``src`` itself when ``src`` is not larger than that or cannot be decoded (the loading
    transform then reports it), or when the copy cannot be written.

    An existing ``dst`` with the modification time of ``src`` is reused.
    """
    source_stat = os.stat(src)
    try:
        if os.stat(dst).st_mtime_ns == source_stat.st_mtime_ns:
            return dst
    except FileNotFoundError:
        pass
    try:
        with Image.open(src) as img:
            width, height = img.size
            if min(width, height) <= short_side:
                return src
            scale = short_side / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image_format = "JPEG" if img.format in JPEG_FORMATS else img.format
            if image_format == "JPEG":
                img.draft("RGB", size)  # decode at a reduced DCT scale that is still >= size
            # RGB, as LoadImagePIL would convert it; EXIF is not copied, so the stored pixel
            # orientation is what LoadImagePIL reads from the source too.
            small = img.convert("RGB").resize(size, Image.BICUBIC)
    except (OSError, SyntaxError, ValueError):
        return src
    if image_format not in KEPT_FORMATS:
        image_format = "PNG"
    options = dict(quality=quality) if image_format in ("JPEG", "WEBP") else {}
    tmp = f"{dst}.tmp-{uuid.uuid4().hex}"
    try:
        os.makedirs(osp.dirname(dst), exist_ok=True)
        small.save(tmp, format=image_format, **options)
        os.utime(tmp, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
        os.replace(tmp, dst)
    except OSError as err:
        if osp.exists(tmp):
            os.remove(tmp)
        print_log(f"failed to write the downscaled copy {dst} ({err}), so {src} is read in place. "
                  "Free space in the cache folder or set downscale.cache_dir elsewhere",
                  logger="current", level=logging.WARNING)
        return src
    return dst


def downscale_images(paths: list[str], folder: str, short_side: int, cache_dir: str | None = None,
                     quality: int = 95, workers: int = 0) -> list[str]:
    """Return the paths to read for ``paths`` (files under ``folder``), writing missing or
    outdated copies with ``workers`` processes (0: this process).

    Copies go to ``<cache_dir>/s<short_side>-q<quality>/`` (``cache_dir`` defaults to
    :func:`default_cache_dir`), so changing either setting never reads old copies.
    """
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1:
        raise ValueError(f"downscale short_side must be a positive whole number of pixels, got {short_side!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"downscale quality must be a whole number from 1 to 100, got {quality!r}")
    root = osp.abspath(cache_dir or default_cache_dir(folder))
    source_root = osp.abspath(folder)
    if osp.commonpath([root, source_root]) == source_root:
        raise ValueError(f"downscale cache_dir {root!r} is inside the image folder {source_root!r}, where the "
                         "copies would be listed as more images; choose a cache_dir outside it")
    cache_dir = osp.join(root, f"s{short_side}-q{quality}")
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as err:
        raise OSError(f"failed to create the downscale cache folder {cache_dir!r} ({err}); "
                      "set downscale.cache_dir to a writable folder") from err
    targets = []
    for path in paths:
        relative = osp.relpath(path, folder)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise ValueError(f"{path!r} is not inside the image folder {folder!r}; downscaling keeps "
                             "paths relative to that folder, so list images under it")
        targets.append(osp.join(cache_dir, relative))
    sizes, qualities = [short_side] * len(paths), [quality] * len(paths)
    started = time.perf_counter()
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(workers) as pool:
            result = list(pool.map(downscale_image, paths, targets, sizes, qualities, chunksize=64))
    else:
        result = list(map(downscale_image, paths, targets, sizes, qualities))
    copies = sum(read != path for read, path in zip(result, paths))
    in_place = ""
    if copies < len(paths):
        in_place = f", {len(paths) - copies} read in place (not larger, not decodable or not written)"
    print_log(f"downscaled images: {copies} of {len(paths)} read from {cache_dir} (short side {short_side})"
              f"{in_place}; {time.perf_counter() - started:.1f} s", logger="current")
    return result
