"""Measure the package's structure: import cycles, arrows between floors, private names, long functions.

    python scripts/architecture.py            # the figures, then each offending cycle / arrow / name
    python scripts/architecture.py --graph    # every import edge, floor to floor

Imports inside functions count as edges, as top-level ones do (a cycle hidden in a function is
still a cycle when the code runs). A module's floor is the first matching prefix of ``FLOORS``,
from the ground up; an arrow from a lower floor to a higher one is an upward import.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from dataclasses import dataclass, field

PACKAGE = "cpt_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent

# Floors from the ground up. A module belongs to the first floor with a prefix it starts with.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("cpt_jax.errors", "cpt_jax.checks", "cpt_jax.config", "cpt_jax.storage",
                "cpt_jax.integrity", "cpt_jax.tree_io", "cpt_jax.outage")),
    ("records", ("cpt_jax.run_dir", "cpt_jax.lease")),
    ("core", ("cpt_jax.model", "cpt_jax.losses", "cpt_jax.schedules", "cpt_jax.optim",
              "cpt_jax.sharding", "cpt_jax.layout", "cpt_jax.data", "cpt_jax.corpus",
              "cpt_jax.doremi", "cpt_jax.lawa", "cpt_jax.dcpt", "cpt_jax.dcpt_ratio",
              "cpt_jax.dcpt_plots", "cpt_jax.vocab",
              "cpt_jax.generate", "cpt_jax.verify", "cpt_jax.ownership")),
    ("training", ("cpt_jax.train", "cpt_jax.eval", "cpt_jax.lawa_online", "cpt_jax.aot")),
    ("workflows", ("cpt_jax.experiment", "cpt_jax.sweep", "cpt_jax.doremi_workflow",
                   "cpt_jax.configure")),
    ("interface", ("cpt_jax.cli", "cpt_jax.commands", "cpt_jax.__main__", "cpt_jax")),
)
MAX_FUNCTION_LINES = 80


def floor_of(module: str) -> int:
    """Index into ``FLOORS`` of the first floor whose prefix names ``module`` or a parent of it."""
    for index, (_, prefixes) in enumerate(FLOORS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise KeyError(f"{module} is on no floor: add its prefix to FLOORS")


@dataclass
class Module:
    name: str
    path: pathlib.Path
    imports: set[str] = field(default_factory=set)
    private_names: list[str] = field(default_factory=list)
    long_functions: list[tuple[str, int]] = field(default_factory=list)


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan(root: pathlib.Path = ROOT) -> dict[str, Module]:
    """Every module of the package with the package modules it imports (anywhere in its body)."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(p, root): Module(module_name(p, root), p) for p in files}
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            for target, names in _imported(node, module):
                target = _resolve(target, modules)
                if target is None or target == module.name:
                    continue
                if not names or any(f"{target}.{n}" not in modules for n, _ in names):
                    module.imports.add(target)
                for name, alias in names:
                    sub = f"{target}.{name}"
                    if sub in modules:
                        if sub != module.name:
                            module.imports.add(sub)
                        aliases[alias] = sub
                    elif name.startswith("_") and not name.startswith("__"):
                        module.private_names.append(f"{target}.{name}")
                if not names:
                    aliases[target.split(".")[-1]] = target
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    module.long_functions.append((node.name, lines))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                module.private_names.append(f"{aliases[node.value.id]}.{node.attr}")
    return modules


def _imported(node: ast.AST, module: Module) -> list[tuple[str, list[tuple[str, str]]]]:
    """(target module, [(name, local alias)]) for an import statement into the package."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.name.split(".")
            if module.path.name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            return []
        return [(target, [(a.name, a.asname or a.name) for a in node.names])]
    return []


def _resolve(target: str, modules: dict[str, Module]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for nxt in sorted(modules[name].imports):
            if nxt not in index:
                visit(nxt)
                low[name] = min(low[name], low[nxt])
            elif nxt in on_stack:
                low[name] = min(low[name], index[nxt])
        if low[name] == index[name]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def _is_package_init(name: str, modules: dict[str, Module]) -> bool:
    return modules[name].path.name == "__init__.py"


def upward_arrows(modules: dict[str, Module]) -> list[tuple[str, str]]:
    """Imports from a module on a lower floor of a module on a higher one (package inits excepted
    as targets: importing ``cpt_jax.eval`` to reach ``cpt_jax.eval.x`` is counted on ``x``)."""
    return sorted((a, b) for a, m in modules.items() for b in m.imports
                  if not _is_package_init(b, modules) and floor_of(b) > floor_of(a))


def figures(modules: dict[str, Module]) -> dict[str, int]:
    return {
        "modules": len(modules),
        "import cycles": len(cycles(modules)),
        "upward arrows": len(upward_arrows(modules)),
        "private names imported across modules": sum(len(m.private_names) for m in modules.values()),
        f"functions over {MAX_FUNCTION_LINES} lines": sum(len(m.long_functions)
                                                          for m in modules.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print every import edge")
    args = parser.parse_args(argv)
    modules = scan()
    for name, value in figures(modules).items():
        print(f"{name:>42}: {value}")
    for component in cycles(modules):
        print("cycle:", " ".join(component))
    for a, b in upward_arrows(modules):
        print(f"upward: {a} ({FLOORS[floor_of(a)][0]}) -> {b} ({FLOORS[floor_of(b)][0]})")
    for m in modules.values():
        for name in m.private_names:
            print(f"private: {m.name} uses {name}")
        for fn, lines in m.long_functions:
            print(f"long: {m.name}.{fn} ({lines} lines)")
    if args.graph:
        for a, m in sorted(modules.items()):
            for b in sorted(m.imports):
                print(f"edge: {a} [{FLOORS[floor_of(a)][0]}] -> {b} [{FLOORS[floor_of(b)][0]}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
