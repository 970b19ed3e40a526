"""Reading pretrained encoder weights and loading them into backbones, strictly and with a report.

Pretrained weight files are always read with ``torch.load(weights_only=True)``: a file
that carries pickled code is rejected and nothing in it runs.
"""
from __future__ import annotations

import fnmatch
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
from mmengine.logging import print_log

# Encoder keys of a pretraining checkpoint start with one of these prefixes.
KNOWN_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# Keys that exist in pretraining checkpoints but not in an encoder.
PRETRAIN_ONLY_KEYS = ("decoder.*", "decoder_*", "mask_token", "mi_max.*", "mi_min.*", "data_preprocessor.*")


class CheckpointError(RuntimeError):
    """A weight file that cannot be read or does not fit the model."""


def read_weights(path: str | os.PathLike) -> dict:
    """Read a weight file with ``weights_only=True``; explain rejected or missing files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained weight file not found: {path!r}; check the path in the config")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError depending on the cause
        raise CheckpointError(
            f"cannot read {path!r} as a tensor-only weight file ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Files that need full unpickling are not loaded as "
            "pretrained weights because unpickling can run code; export the encoder with "
            "tools/convert_checkpoint.py first"
        ) from err


def extract_state_dict(obj: Mapping) -> OrderedDict[str, torch.Tensor]:
    """Return the tensor dict of ``{'model': ...}``, ``{'state_dict': ...}`` or a bare layout."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not state:
        raise CheckpointError(f"no tensors found; top-level keys are {list(obj)[:10]}")
    return state


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Drop ``module.``/``backbone.``/``encoder.`` prefixes and keep only encoder keys when mixed."""
    out = OrderedDict()
    for key, value in state.items():
        for prefix in KNOWN_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def encoder_state_dict(obj: Mapping) -> OrderedDict[str, torch.Tensor]:
    """Return the encoder tensors of any supported layout, with timm/MAE key names.

    A pretraining checkpoint of this project stores the encoder under ``encoder.`` beside
    the decoder and MI heads; those are dropped here.
    """
    state = extract_state_dict(obj)
    if any(key.startswith("encoder.") for key in state):
        state = OrderedDict((k, v) for k, v in state.items() if k.startswith("encoder."))
    state = strip_prefixes(state)
    return OrderedDict((k, v) for k, v in state.items() if not _matches(k, PRETRAIN_ONLY_KEYS))


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def load_report(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = PRETRAIN_ONLY_KEYS,
    logger: str = "current",
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``model`` and log a table of loaded, missing and unexpected keys.

    Raises:
        CheckpointError: when a key outside the allow-lists is missing or unexpected, when a
            shape differs, or when nothing at all matched.
    """
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
        f"  missing    {len(missing):5d}  {_summarize(missing)}",
        f"  unexpected {len(unexpected):5d}  {_summarize(unexpected)}",
    ]
    print_log("\n".join(lines), logger=logger)
    if bad_missing or bad_unexpected:
        raise CheckpointError(
            f"loading {source!r} left keys outside the allow-lists: missing {bad_missing[:8]}, "
            f"unexpected {bad_unexpected[:8]}; check that the file is an encoder of this architecture"
        )
    return missing, unexpected


def _summarize(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")
