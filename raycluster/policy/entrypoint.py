"""An entrypoint read from the job's own packages, without running it: pure, no Ray.

Owns: ``read_entrypoint`` — given ``package.module:function`` and the zip files of the job's
``runtime_env`` packages (its ``working_dir`` and ``py_modules``, as Ray stores them), find the
module's source in them, parse it, and look for ``function`` defined at its top level (``def``,
``class``, an assignment or an import of that name, also inside a top-level ``if``/``try``/
``with``). It answers FOUND (submit need not import it on a worker: ~2.5 s of a cold worker and
``import torch`` saved), a definitive reason (the source does not parse), or UNKNOWN (not in the
packages, or not visibly defined there: ``from x import *``, ``globals()``, a module
``__getattr__`` — the submit check then imports it on a worker, which decides).

What reading cannot see, importing at run time does: a module that parses and defines the
function but fails while importing (a dependency not installed, an exception at import) is
accepted, and its first rank ends the job as a user error with the traceback.
"""

from __future__ import annotations

import ast
import io
import zipfile

FOUND = None
UNKNOWN = "unknown"


def _candidates(module: str) -> list[str]:
    path = module.replace(".", "/")
    return [f"{path}.py", f"{path}/__init__.py"]


def _names(body: list[ast.stmt]) -> set[str]:
    out: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                out |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {a.asname or a.name for a in node.names if a.name != "*"}
        elif isinstance(node, (ast.If, ast.With, ast.AsyncWith)):
            out |= _names(node.body) | _names(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            out |= _names(node.body) | _names(node.orelse) | _names(node.finalbody)
            for handler in node.handlers:
                out |= _names(handler.body)
    return out


def read_entrypoint(entrypoint: str, packages: list[bytes]) -> str | None:
    """FOUND (None), UNKNOWN, or why the entrypoint cannot be used (its module does not parse)."""
    module, _, fn = entrypoint.partition(":")
    for blob in packages:
        try:
            zf = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile:
            continue
        names = set(zf.namelist())
        for path in _candidates(module):
            if path not in names:
                continue
            source = zf.read(path)
            try:
                tree = ast.parse(source, filename=path)
            except SyntaxError as exc:
                return f"cannot import module {module!r}: SyntaxError: {exc.msg} ({path}, line {exc.lineno})"
            return FOUND if fn in _names(tree.body) else UNKNOWN
    return UNKNOWN
