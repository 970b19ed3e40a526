"""Reading pretrained encoder weights and loading them into backbones, strictly and with a report.

Pretrained weight files are always read with ``torch.load(weights_only=True)``: a file
that carries pickled code is rejected and nothing in it runs. Keys of every supported
layout are renamed to timm/MAE names by :func:`mimae.key_maps.to_timm_names` before
anything else looks at them.
"""
from __future__ import annotations

import fnmatch
import math
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .key_maps import KeyMapError, timm_name, to_timm_names
from .models.pos_embed import resize_abs_pos_embed, resize_rel_pos

# Pretraining-only tensors, after renaming to timm/MAE names: the MAE decoder (``decoder.*``
# in this project, ``decoder_*`` in official MAE files, ``neck.*`` in mmpretrain files, which
# also contains mmpretrain's mask token), the mask token, the MI-MAE estimator heads and the
# buffers of a data preprocessor.
PRETRAIN_ONLY_KEYS = (
    "decoder.*",
    "decoder_*",
    "neck.*",
    "mask_token",
    "mi_max.*",
    "mi_min.*",
    "data_preprocessor.*",
)


class CheckpointError(RuntimeError):
    """A weight file that cannot be read or does not fit the model."""


def read_weights(path: str | os.PathLike) -> dict:
    """Read a weight file with ``weights_only=True``; explain rejected or missing files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained weight file not found: {path!r}; check the path in the config")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        rejected = rejected_global(err)
        if rejected is None:
            raise _damaged_file_error(path, err) from err
        raise CheckpointError(
            f"cannot read {path!r} as a tensor-only weight file: it contains an object that "
            f"torch.load(weights_only=True) does not allow ({rejected}). Files that need full "
            "unpickling are not loaded as pretrained weights because unpickling can run code; "
            "export the encoder with tools/convert_checkpoint.py first"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # e.g. a truncated zip archive
        raise _damaged_file_error(path, err) from err


def _error_lines(err: Exception) -> list[str]:
    """Return the non-empty lines of ``err``'s message without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    return [line.strip() for line in text.splitlines() if line.strip()]


def rejected_global(err: Exception) -> str | None:
    """Return the line in which torch names the disallowed global, or None for other failures."""
    return next((line for line in _error_lines(err) if "global" in line.lower()), None)


def _damaged_file_error(path: str, err: Exception) -> CheckpointError:
    lines = _error_lines(err)
    return CheckpointError(
        f"cannot read {path!r}: the file is damaged or was not written by torch.save "
        f"({type(err).__name__}: {lines[0] if lines else repr(err)}). Download or write it again"
    )


def extract_state_dict(obj: Mapping, source: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """Return the tensor dict of ``{'model': ...}``, ``{'state_dict': ...}`` or a bare layout.

    Args:
        obj: the object read from a weight file.
        source: the file name, used in error messages.

    Raises:
        CheckpointError: when ``obj`` is not a mapping or contains no tensors.
    """
    where = f" in {source!r}" if source else ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"no state dict found{where}: the file contains a {type(obj).__name__}, not a dict")
    for key in ("model", "state_dict", "module"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not state:
        raise CheckpointError(f"no tensors found{where}; top-level keys are {list(obj)[:10]}")
    return state


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename every key to its timm/MAE name (see :func:`mimae.key_maps.timm_name`), without merging."""
    return OrderedDict((timm_name(key), value) for key, value in state.items())


def pretrained_state_dict(obj: Mapping, source: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """Return every tensor of a weight file under timm/MAE names, pretraining-only keys included.

    Loaders use this dict, so their key table lists the decoder, mask token and MI heads
    of a pretraining file as unexpected keys.
    """
    state = extract_state_dict(obj, source)
    try:
        return to_timm_names(state)
    except KeyMapError as err:
        raise CheckpointError(f"cannot read {source or 'the weight file'!r}: {err}") from err


def encoder_state_dict(obj: Mapping, source: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """Return the encoder tensors of any supported layout, with timm/MAE key names.

    Pretraining-only keys (``PRETRAIN_ONLY_KEYS``) are left out, which is what an export
    of the encoder needs. Loaders use :func:`pretrained_state_dict` instead.
    """
    state = pretrained_state_dict(obj, source)
    return OrderedDict((k, v) for k, v in state.items() if not _matches(k, PRETRAIN_ONLY_KEYS))


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _pos_embed_layouts(num_slots: int, grid_hw: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """Return every ``(cls slots, source grid)`` reading of a table with ``num_slots`` slots.

    A reading is the model's own grid or a square grid, each with one cls slot or none. A
    non-square source grid is recognized only when it equals ``grid_hw``, because the slot
    count alone does not fix its sides.
    """
    height, width = grid_hw
    readings = []
    for prefix in (1, 0):
        if num_slots - prefix == height * width:
            readings.append((prefix, (height, width)))
    for prefix in (1, 0):
        patches = num_slots - prefix
        side = math.isqrt(max(patches, 0))
        if patches > 0 and side * side == patches and (prefix, (side, side)) not in readings:
            readings.append((prefix, (side, side)))
    return readings


def _describe_layout(layout: tuple[int, tuple[int, int]]) -> str:
    prefix, (height, width) = layout
    return f"one cls slot and a {height}x{width} grid" if prefix else f"a {height}x{width} grid without a cls slot"


def fit_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int], source: str,
                  file_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Return a file's position table as ``(1, 1 + H * W, C)`` for the grid ``grid_hw``.

    The file's table may have one cls slot or none. Its patch grid is resampled bicubically,
    square or not. A missing cls slot becomes a zero slot, which adds nothing to the cls token.
    ``file_grid`` gives the file's grid where its slot count allows more than one reading,
    e.g. 16 slots for a 3 x 5 model: one cls slot and a 3 x 5 grid, or a 4 x 4 grid.

    NOTE: without ``file_grid`` only the model's grid and square grids are candidates. A
    file trained on a non-square grid whose area is a square or the model's area (cls plus
    2 x 8 into a 4 x 4 model) is read as that grid, so it needs ``file_grid``.

    Raises:
        CheckpointError: when the table is not ``(1, N, C)``, ``N`` fits no grid (or not
            ``file_grid``), or ``N`` fits several grids and ``file_grid`` is None.
    """
    grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise CheckpointError(
            f"pos_embed in {source!r} has shape {tuple(pos_embed.shape)}, expected (1, [1 +] H * W, C)"
        )
    num_slots = pos_embed.shape[1]
    if file_grid is not None:
        file_grid = (int(file_grid[0]), int(file_grid[1]))
        if min(file_grid) < 1:
            raise CheckpointError(f"pos_embed_grid must be two positive sides (H, W), got {file_grid}")
        prefix = num_slots - file_grid[0] * file_grid[1]
        if prefix not in (0, 1):
            raise CheckpointError(
                f"pos_embed in {source!r} has {num_slots} slots, which is not the {file_grid[0]}x{file_grid[1]} "
                "grid of pos_embed_grid with or without one cls slot. Correct pos_embed_grid in init_cfg")
        layouts = [(prefix, file_grid)]
    else:
        layouts = _pos_embed_layouts(num_slots, grid_hw)
    if not layouts:
        raise CheckpointError(
            f"pos_embed in {source!r} has {num_slots} slots, which is neither the model's "
            f"{grid_hw[0]}x{grid_hw[1]} grid nor a square grid, with or without one cls slot. For a file "
            "trained on another non-square grid, set pos_embed_grid=(H, W) in the backbone's init_cfg"
        )
    if len(layouts) > 1:
        readings = " or ".join(_describe_layout(layout) for layout in layouts)
        raise CheckpointError(
            f"pos_embed in {source!r} has {num_slots} slots, which can be {readings}, and the file does not "
            "say which. Set pos_embed_grid=(H, W), the patch grid the file was trained on, in the "
            "backbone's init_cfg"
        )
    num_prefix, src_hw = layouts[0]
    table = resize_abs_pos_embed(pos_embed, src_hw, grid_hw, num_prefix_tokens=num_prefix)
    if num_prefix == 0:
        table = torch.cat([table.new_zeros(1, 1, table.shape[-1]), table], dim=1)
    cls_note = "cls slot kept" if num_prefix else "zero cls slot added"
    if src_hw != grid_hw:
        print_log(
            f"resampling pos_embed of {source} from a {src_hw[0]}x{src_hw[1]} grid to "
            f"{grid_hw[0]}x{grid_hw[1]} (bicubic, {cls_note})",
            logger="current",
        )
    elif num_prefix == 0:
        print_log(f"pos_embed of {source} has no cls slot: {cls_note}", logger="current")
    return table


def fit_rel_pos_tables(state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> None:
    """Resample, in place, each relative-position table of ``state`` to the model's length.

    Each axis (``rel_pos_h``, ``rel_pos_w``) is resampled linearly on its own, so a table
    trained for a square window fits a global block of any grid.
    """
    for key, table in list(state.items()):
        if not key.endswith((".rel_pos_h", ".rel_pos_w")) or key not in model_state:
            continue
        target = model_state[key]
        if table.ndim == 2 and table.shape[1] == target.shape[1]:
            state[key] = resize_rel_pos(table, target.shape[0])


def load_encoder_file(
    model: nn.Module,
    path: str | os.PathLike,
    grid_hw: tuple[int, int],
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = PRETRAIN_ONLY_KEYS,
    pos_embed_grid: tuple[int, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Load a pretrained encoder file of any supported layout into a backbone.

    The file's ``pos_embed`` is fitted to ``grid_hw`` with :func:`fit_pos_embed` (its
    ``file_grid`` is ``pos_embed_grid``) and its
    relative-position tables to the model's lengths, then :func:`load_report` loads the
    tensors strictly and logs the key table.

    Returns:
        ``(missing, unexpected)`` as in :func:`load_report`.

    Raises:
        CheckpointError: when the file is missing or unreadable, contains no tensors, has a
            position table of no recognizable grid, or leaves keys outside the allow-lists.
    """
    source = os.fspath(path)
    state = pretrained_state_dict(read_weights(source), source)
    model_state = model.state_dict()
    if "pos_embed" in state and "pos_embed" in model_state:
        state["pos_embed"] = fit_pos_embed(state["pos_embed"], grid_hw, source, pos_embed_grid)
    fit_rel_pos_tables(state, model_state)
    return load_report(model, state, source, allow_missing, allow_unexpected)


def load_report(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = PRETRAIN_ONLY_KEYS,
    logger: str = "current",
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``model`` and log a table of loaded, missing and unexpected keys.

    The table counts the keys of each allow-list pattern (for example ``decoder_* (12)``)
    and lists every key outside the allow-lists by name.

    Returns:
        ``(missing, unexpected)``: model keys that ``state`` lacks and keys of ``state``
        that the model does not have.

    Raises:
        CheckpointError: when a key outside the allow-lists is missing or unexpected, when a
            shape differs, or when nothing at all matched.
    """
    allow_missing = tuple(allow_missing)
    allow_unexpected = tuple(allow_unexpected)
    model_state = model.state_dict()
    matched = [k for k in state if k in model_state]
    if not matched:
        raise CheckpointError(
            f"no key of {source!r} matches the model; first keys in the file: {list(state)[:5]}, "
            f"first keys of the model: {list(model_state)[:5]}"
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in matched
        if state[k].shape != model_state[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"shape mismatch loading {source!r}: " + "; ".join(mismatched[:5]))
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    bad_missing = [k for k in missing if not _matches(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    lines = [
        f"checkpoint {source}",
        f"  loaded     {len(matched):5d} of {len(model_state)} model tensors",
        f"  missing    {len(missing):5d}  {_summarize(missing, allow_missing)}",
        f"  unexpected {len(unexpected):5d}  {_summarize(unexpected, allow_unexpected)}",
    ]
    print_log("\n".join(lines), logger=logger)
    if bad_missing or bad_unexpected:
        raise CheckpointError(
            f"loading {source!r} left keys outside the allow-lists: missing {bad_missing[:8]}, "
            f"unexpected {bad_unexpected[:8]}; check that the file is an encoder of this architecture"
        )
    return missing, unexpected


def _summarize(keys: list[str], allowed: tuple[str, ...], limit: int = 6) -> str:
    """Return ``"allowed: pattern (count), ...; NOT allowed: key, ..."`` for a table row."""
    counts: OrderedDict[str, int] = OrderedDict()
    outside = []
    for key in keys:
        pattern = next((p for p in allowed if fnmatch.fnmatchcase(key, p)), None)
        if pattern is None:
            outside.append(key)
        else:
            counts[pattern] = counts.get(pattern, 0) + 1
    parts = []
    if counts:
        parts.append("allowed: " + ", ".join(f"{pattern} ({count})" for pattern, count in counts.items()))
    if outside:
        shown = ", ".join(outside[:limit])
        more = f", ... (+{len(outside) - limit})" if len(outside) > limit else ""
        parts.append(f"NOT allowed: {shown}{more}")
    return "; ".join(parts)
