"""The package reads top-down: every import of a hdr_jax module (lazy ones inside functions included)
points to its own layer or one below (docs/architecture.md), and no module reads another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom; a module may import its own layer and the ones below it.
LAYERS = [
    ("entry points", {"train", "evaluate", "predict", "convert", "score", "api", "pretrained", "tfds_ntire"}),
    ("running", {"cli", "engine", "tasks", "pretrain"}),
    ("data, checkpoints, evaluation", {"data", "checkpoint", "evaluation", "metrics_log", "sig17", "synthesize",
                                       "tiles", "tiling", "brackets", "config_base"}),
    ("models", {"models"}),
    ("HDR math and files", {"hdr_math", "diffusion", "fileio", "constants"}),
]


def _layer(module: str) -> int:
  top = module.split(".")[1] if module.count(".") else ""
  for i, (_, names) in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f"{module}: in no layer of tests/test_architecture.py (and docs/architecture.md)")


def _imports(path: Path):
  """``(line, imported module, names)`` of every hdr_jax import in ``path``."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hdr_jax":
      if node.module == "hdr_jax":
        for a in node.names:
          yield node.lineno, f"hdr_jax.{a.name}", []
      else:
        yield node.lineno, node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "hdr_jax":
          yield node.lineno, a.name, []


def _modules():
  for path in sorted((ROOT / "hdr_jax").rglob("*.py")):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    yield name, path


def test_every_import_points_to_its_own_layer_or_below():
  upward = []
  for name, path in _modules():
    if name == "hdr_jax":
      continue  # the package's lazy exports name the public API of every layer
    here = _layer(name)
    for line, target, _ in _imports(path):
      if target != "hdr_jax" and _layer(target) < here:
        upward.append(f"{path.relative_to(ROOT)}:{line}: {name} ({LAYERS[here][0]}) imports {target} "
                      f"({LAYERS[_layer(target)][0]})")
  assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
  private = []
  for name, path in _modules():
    for line, target, names in _imports(path):
      hidden = [n for n in names if n.startswith("_") and n != "__version__"]
      if hidden or any(part.startswith("_") for part in target.split(".")):
        private.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {', '.join(names)}")
  assert not private, "private names read across modules:\n" + "\n".join(private)


def test_no_module_reads_another_modules_private_attributes():
  """``fileio._x`` where ``fileio`` is a hdr_jax module imported by name: the benchmarks too."""
  private = []
  paths = [p for _, p in _modules()] + sorted((ROOT / "benchmarks").glob("*.py"))
  for path in paths:
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hdr_jax":
        aliases |= {a.asname or a.name for a in node.names}
      elif isinstance(node, ast.Import):
        aliases |= {a.asname for a in node.names if a.name.split(".")[0] == "hdr_jax" and a.asname}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        private.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not private, "private attributes read across modules:\n" + "\n".join(private)


def test_the_layers_check_catches_an_upward_import(tmp_path):
  """The check itself: a models module importing the engine is reported."""
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from hdr_jax import engine\n")
  (found,) = [t for _, t, _ in _imports(bad)]
  assert _layer(found) < _layer("hdr_jax.models.vam")
