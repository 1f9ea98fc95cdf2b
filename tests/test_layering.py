"""Imports inside `vivit_knn` run one way: lower layers never import higher ones, no cycles.

Layers, lowest first:

  0  models, data, weights, keys, errors, stop_signals, cli (and the package itself);
     models import neither weights nor data, and keys, errors and stop_signals
     import nothing of ours
  1  config, presets
  2  train
  3  main, inference, tools

A `__main__` module (the command line of a package, e.g. `python -m
vivit_knn.weights.convert`) is in its package's layer, like any other module,
and nothing imports it.

Every import counts, at module level or inside a function. The failure
messages list each offending import with its file and line.
"""

import ast
import os
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "vivit_knn"

LAYERS = {
    "vivit_knn": 0, "vivit_knn.keys": 0, "vivit_knn.errors": 0, "vivit_knn.stop_signals": 0,
    "vivit_knn.models": 0, "vivit_knn.data": 0, "vivit_knn.weights": 0, "vivit_knn.cli": 0,
    "vivit_knn.config": 1, "vivit_knn.presets": 1,
    "vivit_knn.train": 2,
    "vivit_knn.main": 3, "vivit_knn.inference": 3, "vivit_knn.tools": 3,
}
# (importer prefix, imported prefix) pairs that are refused within a layer.
FORBIDDEN = [("vivit_knn.models", "vivit_knn.weights"), ("vivit_knn.models", "vivit_knn.data")]
LEAVES = {"vivit_knn.keys", "vivit_knn.errors", "vivit_knn.stop_signals"}  # import nothing of ours


def _modules():
  """`{module name: file path}` for every module of the package."""
  found = {}
  for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


MODULES = _modules()


def _is_package(module):
  return os.path.basename(MODULES[module]) == "__init__.py"


def _resolve(importer, node):
  """The package modules an import statement names (a `from x import y` may name modules y)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  base = node.module or ""
  if node.level:
    parts = importer.split(".")
    if not _is_package(importer):
      parts = parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    base = ".".join(parts + ([base] if base else []))
  names = [f"{base}.{alias.name}" for alias in node.names]
  return [name if name in MODULES else base for name in names]


def _imports():
  """`[(importer, imported, file, line)]` for every import of a package module."""
  edges = []
  for module, path in sorted(MODULES.items()):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      for target in _resolve(module, node):
        while target and target not in MODULES and "." in target:
          target = target.rsplit(".", 1)[0]  # `import a.b.c` with c an attribute
        if target in MODULES and target.split(".")[0] == PACKAGE and target != module:
          edges.append((module, target, os.path.relpath(path, ROOT), node.lineno))
  return sorted(set(edges), key=lambda e: (e[2], e[3], e[1]))


def _is_entry_point(module):
  """A `__main__` module: a package's command line, run with `python -m` and imported by none."""
  return module.rsplit(".", 1)[-1] == "__main__"


def _layer(module):
  best = None
  for prefix, layer in LAYERS.items():
    if module == prefix or module.startswith(prefix + "."):
      if best is None or len(prefix) > len(best[0]):
        best = (prefix, layer)
  return None if best is None else best[1]


def _under(module, prefix):
  return module == prefix or module.startswith(prefix + ".")


def _format(edges):
  return "\n".join(f"  {file}:{line}: {src} imports {dst}" for src, dst, file, line in edges)


def test_every_module_has_a_layer():
  missing = sorted(m for m in MODULES if _layer(m) is None)
  assert not missing, f"modules outside the layer table (add them to LAYERS): {missing}"


def test_the_scanner_sees_function_level_and_relative_imports():
  node = ast.parse("from . import tree").body[0]
  assert _resolve("vivit_knn.weights.timm", node) == ["vivit_knn.weights.tree"]
  node = ast.parse("from vivit_knn.train import optim").body[0]
  assert _resolve("vivit_knn.config", node) == ["vivit_knn.train.optim"]
  assert ("vivit_knn.main", "vivit_knn.train.trainer") in {(s, d) for s, d, _, _ in _imports()}


def test_entry_points_are_in_their_package_s_layer():
  entry_points = sorted(m for m in MODULES if _is_entry_point(m))
  assert entry_points, "no `__main__` module found"
  for module in entry_points:
    package = module.rsplit(".", 1)[0]
    assert _layer(module) == _layer(package), (module, _layer(module), _layer(package))
  assert _layer("vivit_knn.data.convert.__main__") == 0


def test_no_import_goes_up_a_layer():
  bad = [e for e in _imports()
         if None not in (_layer(e[0]), _layer(e[1])) and _layer(e[0]) < _layer(e[1])]
  assert not bad, ("imports from a lower layer to a higher one (layers: 0 models/data/weights/"
                   "keys/cli, 1 config/presets, 2 train, 3 main/inference/tools):\n"
                   + _format(bad))


def test_forbidden_imports_within_a_layer():
  bad = [e for e in _imports()
         if any(_under(e[0], a) and _under(e[1], b) for a, b in FORBIDDEN)
         or e[0] in LEAVES]
  assert not bad, ("models may not import weights or data, and keys imports nothing of ours:\n"
                   + _format(bad))


def test_nothing_imports_an_entry_point():
  bad = [e for e in _imports() if _is_entry_point(e[1])]
  assert not bad, "`__main__` modules are imported by other modules:\n" + _format(bad)


def _cycles(edges):
  """Strongly connected components with more than one module (Tarjan)."""
  graph = defaultdict(set)
  for src, dst, _, _ in edges:
    graph[src].add(dst)
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(component)

  for v in sorted(set(graph) | {d for ds in graph.values() for d in ds}):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_cycles():
  edges = [("a", "b", "f", 1), ("b", "a", "f", 2), ("b", "c", "f", 3)]
  assert _cycles(edges) == [{"a", "b"}]


def test_no_import_cycles():
  edges = _imports()
  lines = []
  for component in _cycles(edges):
    lines.append(f"cycle among {sorted(component)}:")
    lines.append(_format([e for e in edges if e[0] in component and e[1] in component]))
  assert not lines, "import cycles between modules:\n" + "\n".join(lines)
