"""Registries of the ``mimae`` scope, children of MMEngine's root registries.

Pretraining configs set ``default_scope = 'mimae'``; modules that MMEngine itself
provides (optimizers, hooks, ``ImgDataPreprocessor``) resolve through the parents.
Every root registry that a Runner uses gets a child here, so building under the
``mimae`` scope finds a registry of that scope for each kind of module.
"""
from mmengine import registry as root
from mmengine.registry import Registry

MODELS = Registry("model", parent=root.MODELS, locations=["mimae.models"])
DATASETS = Registry("dataset", parent=root.DATASETS, locations=["pretrain.datasets"])
TRANSFORMS = Registry("transform", parent=root.TRANSFORMS, locations=["pretrain.transforms"])
HOOKS = Registry("hook", parent=root.HOOKS, locations=["pretrain.hooks"])

RUNNERS = Registry("runner", parent=root.RUNNERS, locations=["mimae.engine"])
RUNNER_CONSTRUCTORS = Registry("runner constructor", parent=root.RUNNER_CONSTRUCTORS)
LOOPS = Registry("loop", parent=root.LOOPS)
DATA_SAMPLERS = Registry("data sampler", parent=root.DATA_SAMPLERS)
MODEL_WRAPPERS = Registry("model_wrapper", parent=root.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = Registry("weight initializer", parent=root.WEIGHT_INITIALIZERS)
OPTIMIZERS = Registry("optimizer", parent=root.OPTIMIZERS)
OPTIM_WRAPPERS = Registry("optim_wrapper", parent=root.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor", parent=root.OPTIM_WRAPPER_CONSTRUCTORS, locations=["mimae.engine"]
)
PARAM_SCHEDULERS = Registry("parameter scheduler", parent=root.PARAM_SCHEDULERS)
METRICS = Registry("metric", parent=root.METRICS)
EVALUATOR = Registry("evaluator", parent=root.EVALUATOR)
TASK_UTILS = Registry("task util", parent=root.TASK_UTILS)
VISUALIZERS = Registry("visualizer", parent=root.VISUALIZERS)
VISBACKENDS = Registry("vis_backend", parent=root.VISBACKENDS)
LOG_PROCESSORS = Registry("log_processor", parent=root.LOG_PROCESSORS)
FUNCTIONS = Registry("function", parent=root.FUNCTIONS, locations=["pretrain.collate"])


def build_model(cfg: dict):
    """Build ``cfg`` from the mimae model registry whatever the caller's default scope is.

    MMEngine resolves a registry through the current default scope, so a mimae model built
    while an mmdet or mmseg runner is active would otherwise be looked up in their registries.
    """
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mimae"):
        return MODELS.build(cfg)
