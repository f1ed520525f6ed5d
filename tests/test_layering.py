"""The layers hold (docs/architecture.md): read statically from the source with ast, nothing imported.

- no import cycles between omniopd_verl modules (every import counts, also those inside functions);
- no plugin module (an entry point of omniopd_verl.teachers / .similarity / .schedulers) imports
  another plugin module: shared code lives in the teacher library, `similarity.base`, `core`;
- the local engine imports no teacher class (it builds its teacher through the registry);
- the config is plain data: omniopd_verl.config imports no registry and no plugin;
- core imports nothing of the project but core (and errors);
- the rooms (docs/architecture.md): the package root holds only the listed modules; the Hugging Face
  model runtime (`runtime/`) imports only core and errors; nothing imports the demo room (`demo/`);
  only verl_integration/plugin.py reaches into the CPU-verl room (`verl_integration/cpu/`), which
  imports from the rest of verl_integration only its shared pieces; the old-path shims are imported by
  cli/ only.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "omniopd_verl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The project module an import names (a module, or the module holding the imported name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = resolve(name) if name.startswith("omniopd_verl") else None
            # `from omniopd_verl.audit.types import X` imports audit.types (its package __init__ runs too,
            # but that is Python's machinery, not a dependency of this module on the package's contents)
            if target is not None and target != module:
                found.add(target)
    # keep the most specific target: `from a.b import c` names both a.b and a.b.c when c is a module
    return {
        t for t in found if not any(o != t and o.startswith(t + ".") for o in found) or MODULES[t].name != "__init__.py"
    }


# No back-edges are tolerated: the reward manager and agent loop call self_check() from
# verl_integration/self_check.py, which plugin.py (the registrations) only imports.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()

GRAPH = {m: {n for n in imports_of(m) if (m, n) not in KNOWN_BACK_EDGES} for m in MODULES}


def plugin_modules() -> dict[str, str]:
    """module -> 'group:name' for this package's own plugin entry points (installed metadata)."""
    out = {}
    for group in ("omniopd_verl.teachers", "omniopd_verl.similarity", "omniopd_verl.schedulers"):
        for ep in entry_points(group=group):
            module = ep.value.split(":")[0]
            if module in MODULES:
                out[module] = f"{group}:{ep.name}"
    return out


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_reader_sees_real_imports():
    assert "omniopd_verl.teachers.library" in GRAPH["omniopd_verl.registry"]  # a lazy import counts
    assert "omniopd_verl.core.credit" in GRAPH["omniopd_verl.core"]


def test_no_import_cycles():
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle)


def test_no_plugin_module_imports_another_plugin_module():
    plugins = plugin_modules()
    assert len(plugins) >= 8  # 4 teacher modules, 3 similarity modules, the schedulers module
    bad = [
        f"{m} ({plugins[m]}) imports {n} ({plugins[n]})"
        for m in plugins
        if m in GRAPH
        for n in GRAPH[m]
        if n in plugins and n != m
    ]
    assert not bad, bad


def test_the_local_engine_imports_no_teacher_class():
    teacher_plugins = {m for m, ep in plugin_modules().items() if ep.startswith("omniopd_verl.teachers:")}
    for module, path in MODULES.items():
        if not module.startswith("omniopd_verl.local"):
            continue
        assert not (GRAPH[module] & teacher_plugins), (module, GRAPH[module] & teacher_plugins)
        tree = ast.parse(path.read_text())
        named = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        assert not [n for n in named if n.endswith("Teacher")], (module, named)


def test_config_is_plain_data_and_core_is_pure():
    assert GRAPH["omniopd_verl.config"] <= {"omniopd_verl.errors"}, GRAPH["omniopd_verl.config"]
    for module in MODULES:
        if module.startswith("omniopd_verl.core"):
            outside = {n for n in GRAPH[module] if not n.startswith("omniopd_verl.core") and n != "omniopd_verl.errors"}
            assert not outside, (module, outside)


# The package root: the plain-data layer, the plugin machinery, the one advantage path, the entry points
# users type. A new module belongs in a room, not here.
ROOT_MODULES = {
    "omniopd_verl",
    "omniopd_verl.advantage",
    "omniopd_verl.doctor",
    "omniopd_verl.engines",
    "omniopd_verl.errors",
    "omniopd_verl.package_files",
    "omniopd_verl.protocols",
    "omniopd_verl.registry",
    "omniopd_verl.schedulers",
    "omniopd_verl.experiment",  # `python -m omniopd_verl.experiment`, which users type: runs demo/experiment.py
}
CPU_ROOM = "omniopd_verl.verl_integration.cpu"


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_package_root_holds_only_its_listed_modules():
    root = {m for m in MODULES if m.count(".") <= 1 and MODULES[m].name != "__init__.py" or m == "omniopd_verl"}
    unexpected = root - ROOT_MODULES
    assert not unexpected, f"{sorted(unexpected)}: put a new module in a room (docs/architecture.md)"


def test_the_model_runtime_imports_only_core_and_errors():
    for module in MODULES:
        if in_room(module, "omniopd_verl.runtime"):
            outside = {
                n
                for n in GRAPH[module]
                if not in_room(n, "omniopd_verl.runtime")
                and not in_room(n, "omniopd_verl.core")
                and n != "omniopd_verl.errors"
            }
            assert not outside, (module, outside)


def test_nothing_imports_the_demo_room():
    users = {
        m
        for m, deps in GRAPH.items()
        if not in_room(m, "omniopd_verl.demo") and m != "omniopd_verl.experiment"
        for n in deps
        if in_room(n, "omniopd_verl.demo")
    }
    assert not users, sorted(users)


def test_the_cpu_verl_room_is_reached_only_through_the_plugin():
    users = {m for m, deps in GRAPH.items() if not in_room(m, CPU_ROOM) for n in deps if in_room(n, CPU_ROOM)}
    # the plugin registers the CPU platform; `omniopd-verl train --cpu` sets the CPU smoke run's environment
    assert users <= {"omniopd_verl.verl_integration.plugin", "omniopd_verl.cli.train"}, sorted(users)
    shared = {
        "omniopd_verl.verl_integration.names",
        "omniopd_verl.verl_integration.verl_private",
        "omniopd_verl.verl_integration.trainers",  # the step-metrics mixin every trainer mode has
    }
    for module in MODULES:
        if in_room(module, CPU_ROOM):
            seam = {
                n for n in GRAPH[module] if in_room(n, "omniopd_verl.verl_integration") and not in_room(n, CPU_ROOM)
            }
            assert seam <= shared, (module, seam - shared)
