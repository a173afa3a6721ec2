"""What a code change touched: the hyperparameters and functions an experiment commit changed.

The research journal groups ideas by these names, read from the code rather than from the
agent's description: for each changed line of a Python file, the module-level assignment it is
in (`MATRIX_LR`), else the innermost function or class around it (`GPT.forward`, `Muon.step`),
`imports` for import lines, `top level` for other module-level code, or the file's name when
the file does not parse; other files count by their path.
"""

from __future__ import annotations

import ast
import difflib

import git

from autoresearch_mcp.sandbox.history import files_at

MAX_NAMES = 8
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def touched_between(repo: git.Repo, parent: str | None, commit: str) -> list[str]:
    """What `commit` changed against `parent` (nothing to compare with: no names)."""
    if parent is None:
        return []
    before, after = files_at(repo.commit(parent)), files_at(repo.commit(commit))
    names: list[str] = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path):
            names += touched_names(path, _text(before.get(path)), _text(after.get(path)))
    return list(dict.fromkeys(names))[:MAX_NAMES]


def touched_names(path: str, before: str | None, after: str | None) -> list[str]:
    """The names a change of one file touched, in file order; `[path]` when nothing finer is known."""
    if before == after:
        return []
    if before is None or after is None or not path.endswith(".py"):
        return [path]
    old_lines, new_lines = _changed_lines(before.splitlines(), after.splitlines())
    names = _names_at(before, old_lines, path) + _names_at(after, new_lines, path)
    return list(dict.fromkeys(names)) or [path]


def _changed_lines(old: list[str], new: list[str]) -> tuple[list[int], list[int]]:
    """1-based numbers of the lines removed from `old` and added to `new`."""
    removed: list[int] = []
    added: list[int] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += range(i1 + 1, i2 + 1)
            added += range(j1 + 1, j2 + 1)
    return removed, added


def _names_at(source: str, lines: list[int], path: str) -> list[str]:
    if not lines:
        return []
    try:
        module = ast.parse(source)
    except SyntaxError:
        return [path]
    names = []
    for line in lines:
        for statement in module.body:
            if _first_line(statement) <= line <= (statement.end_lineno or statement.lineno):
                names += _name_in(statement, line, prefix="")
                break
    return names


def _name_in(node: ast.stmt, line: int, prefix: str) -> list[str]:
    """The name for `line` inside the module-level statement (or nested scope) `node`."""
    if isinstance(node, _SCOPES):
        name = prefix + node.name
        for child in node.body:
            if isinstance(child, _SCOPES) and _first_line(child) <= line <= (child.end_lineno or child.lineno):
                return _name_in(child, line, prefix=name + ".")
        return [name]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)] or ["top level"]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return ["imports"]
    return ["top level"]


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")
