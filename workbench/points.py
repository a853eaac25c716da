"""Cached model points: a model made from another one (pruned, fine-tuned, distilled) is a
ResultCache record (its report) plus its weights, keyed like every other point
(workbench.cache: {"step": ..., **settings}, the input model's fingerprint, the data's).

    model, record, cached = cached_model(store, "prune-weights", {"prune": cfg.to_dict()},
                                         base, lambda m: prune_(m, calib, cfg).to_dict(),
                                         model_fp=base_fp, data_fp=calib_fp, kind="pruned")

The weights live at $WORKBENCH_CACHE/models/<kind>/<key>.safetensors and are written before
the record, so a record means whole weights; weights that do not load (damaged, another
architecture) are recomputed, never trusted. A long computation can resume from its own
checkpoints under `checkpoint_dir(kind, key)` (the recovery driver's training runs do), which
is removed once the point is stored.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

from torch import nn

from workbench import cache
from workbench.checkpoint import load_weights, save_weights


class Lazy:
    """A model built only when a point that needs it is not cached: Lazy(build).get() calls
    build() once and keeps the result. Cached helpers (sweep.evaluate_cached) accept one
    wherever they take a model."""

    def __init__(self, build: Callable[[], nn.Module]):
        self._build, self._model = build, None

    def get(self) -> nn.Module:
        if self._model is None:
            self._model = self._build()
        return self._model

    @property
    def built(self) -> bool:
        return self._model is not None


def weights_path(kind: str, key: str) -> Path:
    return cache.cache_root() / "models" / kind / f"{key}.safetensors"


def checkpoint_dir(kind: str, key: str) -> Path:
    """Where the computation of a model point keeps its resumable checkpoints."""
    return cache.cache_root() / "checkpoints" / kind / key


def model_key(store: cache.ResultCache, step: str, settings: dict, model_fp: str,
              data_fp: str) -> str:
    return store.key({"step": step, **settings}, model_fp=model_fp, data_fp=data_fp)


def cached_model(store: cache.ResultCache, step: str, settings: dict, start: nn.Module,
                 build: Callable[[nn.Module, Path], dict], *, model_fp: str, data_fp: str,
                 kind: str | None = None, refresh: bool = False) -> tuple[nn.Module, dict, bool]:
    """(model, record, cached): a copy of start changed in place by build(model, ckpt_dir) ->
    record (ckpt_dir: where it may keep resumable checkpoints), or that copy loaded from the
    cached weights. start itself is never modified."""
    kind = kind or step
    key = model_key(store, step, settings, model_fp, data_fp)
    path = weights_path(kind, key)
    record = None if refresh else store.get(key)
    model = copy.deepcopy(start)
    if record is not None:
        if load_weights(model, path):
            return model, record, True
        model = copy.deepcopy(start)
    record = cache.to_jsonable(build(model, checkpoint_dir(kind, key)))
    save_weights(model, path)
    store.put(key, record)
    shutil.rmtree(checkpoint_dir(kind, key), ignore_errors=True)
    return model, record, False
