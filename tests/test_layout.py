"""The package's layout (README "Layout"): imports run one way, and the tools
use the pure steps and the optimizer, never the training loop."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'alexnet_jax')
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith('.py') and f != '__init__.py')


def imports_of(module: str) -> set:
  """alexnet_jax modules `module` imports, at the top or inside functions."""
  tree = ast.parse(open(os.path.join(PACKAGE, module + '.py')).read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'alexnet_jax':
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('alexnet_jax.'):
      found.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('alexnet_jax.')}
  return found & set(MODULES)


def cycle(graph: dict):
  """One import cycle of `graph` as a list of modules, or None."""
  state = {}

  def visit(m, path):
    state[m] = 'open'
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        return path[path.index(n):] + [n]
      if n not in state:
        found = visit(n, path + [n])
        if found:
          return found
    state[m] = 'done'
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m, [m])
      if found:
        return found
  return None


def test_no_import_cycle():
  graph = {m: imports_of(m) for m in MODULES}
  assert cycle(graph) is None, ' -> '.join(cycle(graph))
  # The check itself finds a cycle when there is one.
  assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_config_checks_imports_no_training_code():
  assert not imports_of('config_checks') & {'train', 'steps', 'checkpoint', 'parallel'}


@pytest.mark.parametrize('tool', ['predict', 'ensemble', 'convert', 'report', 'summary',
                                  'stats', 'prepare', 'sweep'])
def test_tools_do_not_import_the_loop(tool):
  assert 'train' not in imports_of(tool)


def test_no_module_imports_configs():
  """configs/ are data: the code owns its defaults and never reads a config file
  by import (issue 25); the configs import nothing of alexnet_jax."""
  def imported(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        yield node.module or ''
      elif isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
  found = [f'{m}: {name}' for m in MODULES
           for name in imported(os.path.join(PACKAGE, m + '.py'))
           if name.split('.')[0] == 'configs']
  assert not found, found
  configs = os.path.join(ROOT, 'configs')
  found = [f'{f}: {name}' for d in (configs, os.path.join(configs, 'sweeps'))
           for f in os.listdir(d) if f.endswith('.py')
           for name in imported(os.path.join(d, f)) if name.split('.')[0] == 'alexnet_jax']
  assert not found, found


def test_no_function_is_long():
  """Small functions (issue 19: none over ~80 lines)."""
  long = []
  for m in MODULES:
    tree = ast.parse(open(os.path.join(PACKAGE, m + '.py')).read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 85:
          long.append(f'{m}.{node.name}: {n} lines')
  assert not long, long
