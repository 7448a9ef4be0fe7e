"""Every NPU line of the harness ran: `python tests/npu_lines.py coverage.json` (nox -s npu-emulated).

An NPU line is one inside the harness's NPU code: a file that is NPU-only, a function that only
an NPU reaches, or the branch of an `if` whose test compares against "npu" (`x == "npu"`,
`x.type == "npu"`), the true branch for == and the false one for !=.
Reads coverage.py's JSON report of the emulated runs, prints the share of NPU lines executed
(and of all lines in the files that hold them) and exits 1 naming any NPU line that never ran.

Not counted: the `backward` of an autograd Function. On a device other than the CPU, autograd
runs backward functions on its own C++ thread per device, where coverage.py's tracer is never
installed, so those lines run unseen; tests/test_npu_emulated.py asserts on their effects
(npu_deform_conv's gradients pass the gate, with HF32 off inside the backward).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NPU_FILES = ["impls/npu_deform_conv.py"]
# Functions that only an NPU reaches, in files that serve every device.
NPU_FUNCTIONS = {
    "impls/devices.py": ["torch_npu_import_error", "npu_vector_cores"],
    "impls/ascendc/__init__.py": ["_plan", "ascendc"],
    # Its envelope is plain shape logic, run on the CPU by tests/test_msda.py.
    "impls/msda/mx_driving.py": ["_requires", "mx_driving"],
}
# Every harness file is searched for `"npu"` branches (the coverage source in pyproject.toml).
SOURCES = ["impls", "bench", "parity", "reports"]


def _mentions_npu(test: ast.expr) -> str | None:
    """'==' or '!=' when the test compares something with "npu", else None."""
    for node in ast.walk(test):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value == "npu" for o in operands):
                return "!=" if any(isinstance(op, (ast.NotEq, ast.NotIn)) for op in node.ops) else "=="
    return None


def _lines(statements) -> set[int]:
    lines = set()
    for statement in statements:
        lines.update(range(statement.lineno, statement.end_lineno + 1))
    return lines


def npu_lines(path: str) -> set[int]:
    tree = ast.parse((ROOT / path).read_text())
    unseen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            unseen |= {line for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "backward"
                       for line in range(item.lineno, item.end_lineno + 1)}
    if path in NPU_FILES:
        return _lines(tree.body) - unseen
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in NPU_FUNCTIONS.get(path, ()):
            lines |= _lines(node.body)
        if isinstance(node, (ast.If, ast.IfExp)):
            kind = _mentions_npu(node.test)
            branch = node.body if kind == "==" else node.orelse if kind == "!=" else None
            if branch:
                lines |= _lines(branch if isinstance(branch, list) else [branch])
    return lines - unseen


def main(report_path: str) -> int:
    files = json.loads(Path(report_path).read_text())["files"]
    sources = sorted(str(p.relative_to(ROOT)) for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))
    npu_total = npu_run = file_total = file_run = 0
    holding, missed = [], []
    for path in sources:
        record = files.get(path, {"executed_lines": [], "missing_lines": []})
        executed = set(record["executed_lines"])
        statements = executed | set(record["missing_lines"])
        npu = npu_lines(path) & statements
        if not npu:
            continue
        holding.append(path)
        npu_total, npu_run = npu_total + len(npu), npu_run + len(npu & executed)
        file_total, file_run = file_total + len(statements), file_run + len(executed)
        missed += [f"{path}:{line}" for line in sorted(npu - executed)]
    print(f"NPU lines executed on the emulated NPU: {npu_run} of {npu_total} "
          f"({100 * npu_run / max(npu_total, 1):.1f}%) in {', '.join(holding)}; all lines of those "
          f"{len(holding)} files: {file_run} of {file_total} ({100 * file_run / max(file_total, 1):.1f}%)")
    if missed:
        print("never executed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
