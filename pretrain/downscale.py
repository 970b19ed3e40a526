"""Downscaled copies of training images, written once and read in every epoch.

A photo several times larger than the training crop costs most of its loading time in
JPEG decoding, and on a machine with few CPUs the loader then takes that time from the
training threads. A copy whose shorter side is just large enough for the crops is decoded
by the same pipeline at a fraction of the cost. Copies keep the source's relative path and
file format, and carry the source's modification time, so a changed source is copied
again on the next build. Writes go to a temporary name first and are renamed into place,
so processes that build the same data set at once (one per rank) cannot read a half file.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor

from mmengine.logging import print_log
from PIL import Image

__all__ = ["default_cache_dir", "downscale_image", "downscale_images"]

LOSSY_FORMATS = ("JPEG", "WEBP")


def default_cache_dir(folder: str, short_side: int) -> str:
    """``~/.cache/mimae/downscaled/<hash of the folder's absolute path>-s<short_side>``."""
    digest = hashlib.sha1(osp.abspath(folder).encode()).hexdigest()[:12]
    return osp.join(osp.expanduser("~/.cache/mimae/downscaled"), f"{digest}-s{short_side}")


def downscale_image(src: str, dst: str, short_side: int, quality: int = 95) -> str:
    """Return the path to read for ``src``: ``dst`` holding a copy of ``src`` whose shorter
    side is ``short_side``, or ``src`` itself when it is not larger than that or cannot be
    decoded (the loading transform then reports it).

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
            image_format = img.format
            if image_format == "JPEG":
                img.draft("RGB", size)  # decode at a reduced DCT scale that is still >= size
            # RGB, as LoadImagePIL would convert it; EXIF is not copied, so the stored pixel
            # orientation is what LoadImagePIL reads from the source too.
            small = img.convert("RGB").resize(size, Image.BICUBIC)
    except (OSError, SyntaxError, ValueError):
        return src
    os.makedirs(osp.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    options = dict(quality=quality) if image_format in LOSSY_FORMATS else {}
    small.save(tmp, format=image_format if image_format in Image.SAVE else "PNG", **options)
    os.utime(tmp, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
    os.replace(tmp, dst)
    return dst


def _downscale_one(job: tuple[str, str, int, int]) -> str:
    return downscale_image(*job)


def downscale_images(paths: list[str], folder: str, short_side: int, cache_dir: str | None = None,
                     quality: int = 95, workers: int = 0) -> list[str]:
    """Return the paths to read for ``paths`` (files under ``folder``), writing missing or
    outdated copies into ``cache_dir`` with ``workers`` processes (0: this process)."""
    if short_side < 1:
        raise ValueError(f"downscale short_side must be a positive number of pixels, got {short_side}")
    cache_dir = cache_dir or default_cache_dir(folder, short_side)
    jobs = []
    for path in paths:
        relative = osp.relpath(path, folder)
        if relative.startswith(".."):
            raise ValueError(f"{path!r} is not inside the image folder {folder!r}; downscaling keeps "
                             "paths relative to that folder, so list images under it")
        jobs.append((path, osp.join(cache_dir, relative), short_side, quality))
    started = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            result = list(pool.map(_downscale_one, jobs, chunksize=64))
    else:
        result = [_downscale_one(job) for job in jobs]
    copies = sum(path != job[0] for path, job in zip(result, jobs))
    in_place = f", {len(paths) - copies} not larger (or not decodable) and read in place" if copies < len(paths) else ""
    print_log(f"downscaled images: {copies} of {len(paths)} read from {cache_dir} (short side {short_side})"
              f"{in_place}; {time.perf_counter() - started:.1f} s", logger="current")
    return result
