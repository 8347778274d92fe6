"""The few endpoints of each SDK's API that the SDK tests call, for :mod:`app.upstream`.

One module per API. Each has ``handles(path) -> bool`` and ``answer(handler, path, query,
body, gates)``, which writes the whole answer on ``handler`` (an ``app.upstream.Handler``);
the upstream has counted the request (connection, pid, request id) before. Modules are
found here by name, so adding an API is adding a module.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_modules: list[ModuleType] | None = None


def find(path: str) -> ModuleType | None:
    """The stub that answers ``path``, if one does."""
    global _modules
    if _modules is None:
        _modules = [importlib.import_module(f"{__name__}.{info.name}")
                    for info in pkgutil.iter_modules(__path__)]
    return next((module for module in _modules if module.handles(path)), None)


def answer_json(handler: Any, status: int, document: object,
                headers: Sequence[tuple[str, str]] = (),
                ctype: str = "application/json") -> None:
    """``document`` as the upstream's own JSON answer (``Handler._answer``: status, type,
    length, ``headers``, and the body unless the request was a HEAD)."""
    handler._answer(status, json.dumps(document).encode(), ctype, headers)
