"""The `tiny` model family plugin: a small Llama-style base the factory builds and pretrains itself."""

from factory.hookspecs import hookimpl
from factory_plugins.tiny.family import TinyFamily, __version__

__all__ = ["TinyFamily", "__version__"]


@hookimpl
def register_model_families(register):
    register(TinyFamily())
