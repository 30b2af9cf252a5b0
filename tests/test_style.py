"""House rule R1: files stay small and functions short, so every module can be read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
SOURCE_DIRS = ["dnnlib", "torch_utils", "training", "metrics", "benchmarks"]


def _python_files() -> list[Path]:
    files = sorted(REPO_ROOT.glob("*.py"))
    for d in SOURCE_DIRS:
        files += sorted((REPO_ROOT / d).rglob("*.py"))
    return files


def test_there_are_sources_to_check():
    assert len(_python_files()) >= 3


def test_files_are_short():
    too_long = [f"{p.relative_to(REPO_ROOT)}: {n} lines" for p in _python_files()
                if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not too_long, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(too_long)


def test_functions_are_short():
    too_long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)
