"""PaddleVideo's own `loader/pipelines` modules from the installed `ppvideo`, loaded by file path.

`import ppvideo` fails on paddle 3.x (it imports paddle.fluid), and its registry pulls in yaml and the
trainer; the pipeline classes themselves only need a registry with `register()`. This stubs the
parent packages and the registry so that `sample.py`, `augmentations.py` and `decode.py` import as
they are. Used by benchmarks/input_speed.py and by tests that compare against PaddleVideo.
"""

import importlib
import os
import sys
import types


class _Registry:
    def __init__(self):
        self.classes = {}

    def register(self, name=None):
        def add(cls):
            self.classes[name or cls.__name__] = cls
            return cls
        return add


def load_paddlevideo_pipelines(names=("sample", "augmentations", "decode")):
    """The named modules of ppvideo's loader/pipelines (a tuple), or ImportError when ppvideo is missing.

    `augmentations` imports paddle (slow); `sample` and `decode` do not.
    """
    import importlib.util

    spec = importlib.util.find_spec("ppvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("ppvideo is not installed (pip install ppvideo --no-deps)")
    base = list(spec.submodule_search_locations)[0]
    packages = [("ppvideo", base), ("ppvideo.paddlevideo", os.path.join(base, "paddlevideo")),
                ("ppvideo.paddlevideo.loader", os.path.join(base, "paddlevideo", "loader")),
                ("ppvideo.paddlevideo.loader.pipelines", os.path.join(base, "paddlevideo", "loader", "pipelines"))]
    for name, path in packages:
        if name not in sys.modules or not hasattr(sys.modules[name], "_stub"):
            module = types.ModuleType(name)
            module.__path__ = [path]
            module._stub = True
            sys.modules[name] = module
    registry = types.ModuleType("ppvideo.paddlevideo.loader.registry")
    registry.PIPELINES = _Registry()
    sys.modules.setdefault("ppvideo.paddlevideo.loader.registry", registry)
    return tuple(importlib.import_module(f"ppvideo.paddlevideo.loader.pipelines.{name}")
                 for name in names)
