"""Registries of the ``mimae`` scope, children of MMEngine's root registries.

Pretraining configs set ``default_scope = 'mimae'``; modules that MMEngine itself
provides (optimizers, hooks, ``ImgDataPreprocessor``) resolve through the parents.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry("model", parent=MMENGINE_MODELS, locations=["mimae.models"])
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, locations=["pretrain.datasets"])
TRANSFORMS = Registry("transform", parent=MMENGINE_TRANSFORMS, locations=["pretrain.transforms"])
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, locations=["pretrain.hooks"])
