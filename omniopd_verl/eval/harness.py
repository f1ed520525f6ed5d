"""Make a benchmark's test code type-strict, so a program cannot pass by returning a value that lies.

HumanEval's `check(candidate)` and MBPP's `assert f(x) == y` lines compare with `==`, which calls the
*program's* `__eq__`: an object whose `__eq__` always returns True passes every test. This module
rewrites every `assert` statement of the test code (parsed with `ast`, never by text) so that:
  - `a == b` / `a != b` become `__omniopd_equal(a, b)` / `not __omniopd_equal(a, b)`: both sides must be
    built from exact built-in types (int, str, list, dict, ...; no subclasses, no user classes) and are
    compared by the harness, never by a method the program could supply or patch;
  - every other comparison's operands, `and`/`or`/`not` operands and the assert's own condition must be
    plain values too (an object's `__lt__`, `__contains__` or `__bool__` could lie as well);
  - a call `f(...)` by name returns a plain value (`__omniopd_call(f)(...)`), so `abs(f(x) - y) < 1e-6`
    cannot be satisfied by an object whose `__sub__` returns 0. Classes and built-ins are not wrapped:
    tests build their inputs with them (MBPP 601 calls `Pair(5, 24)`).
HumanEval's candidate is also passed to `check` wrapped (`CHECKED_CALL`), which covers the few checks
that call it outside an assert. Numbers still compare across int/float/bool, as the benchmarks' own
reference harnesses do (1 == 1.0 == True); the helpers live in `sandbox_runner`.
"""

from __future__ import annotations

import ast

PLAIN, EQUAL, CHECKED_CALL = "__omniopd_plain", "__omniopd_equal", "__omniopd_call"


def _helper(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _StrictAsserts(ast.NodeTransformer):
    """Rewrites expressions inside `assert` statements only; the rest of the test code is untouched."""

    def __init__(self) -> None:
        self.in_assert = False

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:  # noqa: N802 - ast visitor name
        self.in_assert = True
        try:
            node.test = _helper(PLAIN, self.visit(node.test))
        finally:
            self.in_assert = False
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.expr:  # noqa: N802
        self.generic_visit(node)
        if not self.in_assert:
            return node
        operands = [node.left, *node.comparators]
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            same = _helper(EQUAL, operands[0], operands[1])
            return same if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(op=ast.Not(), operand=same)
        node.left = _helper(PLAIN, node.left)
        node.comparators = [_helper(PLAIN, c) for c in node.comparators]
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:  # noqa: N802
        self.generic_visit(node)
        if self.in_assert:
            node.values = [_helper(PLAIN, v) for v in node.values]
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:  # noqa: N802
        self.generic_visit(node)
        if self.in_assert and isinstance(node.op, ast.Not):
            node.operand = _helper(PLAIN, node.operand)
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:  # noqa: N802
        self.generic_visit(node)
        if self.in_assert and isinstance(node.func, ast.Name) and node.func.id not in (PLAIN, EQUAL, CHECKED_CALL):
            node.func = _helper(CHECKED_CALL, node.func)
        return node


def strict_tests(source: str) -> str:
    """`source` with every assert made type-strict (see the module doc). Raises SyntaxError if the test
    code does not parse (a benchmark defect, not the program's)."""
    tree = _StrictAsserts().visit(ast.parse(source))
    return ast.unparse(ast.fix_missing_locations(tree))
