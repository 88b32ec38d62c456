"""py-imports-lazy: py-imports without its libraries in the snapshot.

componentize-py runs the top level at build time and snapshots the
interpreter, and the component has no files at run time. So this module
imports work.py at build time only to learn which modules it loads, keeps
their source text and unloads them: the snapshot holds text, not modules.
The handler imports work.py from that text, so every fresh instance
compiles and runs json, email, decimal, … itself, as an interpreter
without a snapshot does (reading memory, not disk).
"""

import importlib.abc
import importlib.util
import sys

from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


def _unload_keeping_sources() -> dict:
    before = set(sys.modules)
    import work  # noqa: F401

    sources = {}
    for name in set(sys.modules) - before:
        spec = sys.modules[name].__spec__
        loader = spec.loader if spec else None
        try:
            source = loader.get_source(name) if loader else None
        except (ImportError, OSError):
            source = None
        if source is not None:  # a built-in module (C) stays loaded
            package = spec.submodule_search_locations is not None
            sources[name] = (source, spec.origin, package)
            del sys.modules[name]
    return sources


SOURCES = _unload_keeping_sources()


class _FromSource(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules in SOURCES from their text."""

    def find_spec(self, name, path=None, target=None):
        if name not in SOURCES:
            return None
        _, origin, package = SOURCES[name]
        return importlib.util.spec_from_loader(name, self, origin=origin, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source, origin, _ = SOURCES[module.__name__]
        exec(compile(source, origin, "exec"), module.__dict__)


sys.meta_path.insert(0, _FromSource())


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        import work

        work.handle(request, response_out)
