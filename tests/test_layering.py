"""The library's layers, checked from the source: imports run downward only, and no module imports itself back.

    front ends   sd_keras.cli, sd_keras.server
    api          sd_keras (the package: StableDiffusion, load, ... resolved lazily)
    tasks        pipeline, loop, generator, loading, export, train, dataset, evaluate, upscale, prompts, data
    loading      weights, presets
    models       models
    foundation   errors, paths, defaults, config, schedulers, noise, tokenizer, metadata, backend, files, ...

Every ``import`` in every module of ``sd_keras`` and ``export/`` (installed as ``sd_keras.export``) counts, those
inside functions included: a lazy import still ties the two modules together. A module may import from its own
layer or a lower one; imports must form no loop, between modules or between packages. A new module must be placed in ``LAYERS`` below.
"""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.once  # reads source files: the same under every backend

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = {"sd_keras": ROOT / "sd_keras", "sd_keras.export": ROOT / "export"}  # setup.py's package_dir

FOUNDATION, MODELS, LOADING, TASKS, API, FRONT_ENDS = range(6)
LAYER_NAMES = ("foundation", "models", "loading", "tasks", "api", "front ends")
# Module (or package: all its modules) -> layer. The longest matching name wins; "sd_keras" is the package's
# __init__ alone.
LAYERS = {
    "sd_keras.version": FOUNDATION,
    "sd_keras.errors": FOUNDATION,
    "sd_keras.paths": FOUNDATION,
    "sd_keras.defaults": FOUNDATION,
    "sd_keras.env": FOUNDATION,
    "sd_keras.config": FOUNDATION,
    "sd_keras.config_sdxl": FOUNDATION,
    "sd_keras.schedulers": FOUNDATION,
    "sd_keras.noise": FOUNDATION,
    "sd_keras.tokenizer": FOUNDATION,
    "sd_keras.prompt_syntax": FOUNDATION,
    "sd_keras.metadata": FOUNDATION,
    "sd_keras.backend": FOUNDATION,
    "sd_keras.files": FOUNDATION,
    "sd_keras.image_file": FOUNDATION,
    "sd_keras.images": FOUNDATION,
    "sd_keras.tiling": FOUNDATION,
    "sd_keras.models": MODELS,
    "sd_keras.weights": LOADING,
    "sd_keras.presets": LOADING,
    # load() picks the engine (Keras pipeline or LiteRT bundle runner), so it sits beside the engines
    "sd_keras.loading": TASKS,
    "sd_keras.generator": TASKS,
    "sd_keras.loop": TASKS,
    "sd_keras.pipeline": TASKS,
    "sd_keras.pipeline_sdxl": TASKS,
    "sd_keras.prompts": TASKS,
    "sd_keras.export": TASKS,
    "sd_keras.export_worker": TASKS,
    "sd_keras.train": TASKS,
    "sd_keras.data": TASKS,
    "sd_keras.dataset": TASKS,
    "sd_keras.evaluate": TASKS,
    "sd_keras.upscale": TASKS,
    "sd_keras.hires": TASKS,
    "sd_keras.tiled_vae": TASKS,
    "sd_keras": API,
    "sd_keras.cli": FRONT_ENDS,
    "sd_keras.server": FRONT_ENDS,
}


def module_files():
    """Module name -> source path of every module of the two source trees."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _absolute(module, node, is_package):
    """The absolute module name an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name, modules):
    """``name`` or its longest prefix that is a module of ours; None for other libraries."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module, path, modules):
    """Module -> line of each of our modules that ``module`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            # `from package import name` imports the sub-module `name` when there is one, else the package
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        for target in targets:
            known = _known(target, modules)
            if known is not None and known != module:
                found.setdefault(known, node.lineno)
    return found


def layer_of(module):
    """The layer of ``module``: its own entry in LAYERS, else its package's (``sd_keras``'s covers only itself:
    a new top-level module must be placed)."""
    name = module
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
        if name == "sd_keras":
            return None
    return None


@pytest.fixture(scope="module")
def graph():
    files = module_files()
    return files, {module: imports_of(module, path, files) for module, path in files.items()}


def _where(files, module, line):
    return f"{files[module].relative_to(ROOT)}:{line}"


def test_every_module_has_a_layer(graph):
    files, _ = graph
    unplaced = [str(files[module].relative_to(ROOT)) for module in files if layer_of(module) is None]
    assert not unplaced, (f"modules in no layer: {', '.join(unplaced)}. Place each in tests/test_layering.py's "
                          f"LAYERS ({', '.join(LAYER_NAMES)}; see CONTRIBUTING.md)")


def test_imports_run_downward_only(graph):
    files, imports = graph
    upward = []
    for module, targets in sorted(imports.items()):
        for target, line in sorted(targets.items()):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{_where(files, module, line)}: {module} ({LAYER_NAMES[low]}) imports {target} "
                              f"({LAYER_NAMES[high]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def import_cycles(imports):
    """Each group of modules that import one another (Tarjan's strongly connected components), as one cycle
    through the group: ``[a, b, ..., a]``."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(start):
        # iterative depth-first search: (module, iterator over its imports)
        work = [(start, iter(sorted(imports.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(imports.get(target, ())))))
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == module:
                            break
                    if len(group) > 1:
                        groups.append(set(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return [_cycle_through(group, imports) for group in groups]


def _cycle_through(group, imports):
    """A shortest import path from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(imports.get(module, ())):
                if target == start:
                    return paths[module] + [start]
                if target in group and target not in paths:
                    paths[target] = paths[module] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {sorted(group)}")


def test_no_import_cycles(graph):
    files, imports = graph
    cycles = import_cycles(imports)
    lines = []
    for cycle in cycles:
        steps = [f"{a} ({_where(files, a, imports[a][b])})" for a, b in zip(cycle, cycle[1:])]
        lines.append(" -> ".join(steps + [cycle[-1]]))
    assert not cycles, "import loops:\n" + "\n".join(lines)


def package_of(module):
    """``sd_keras.weights.lora`` -> ``sd_keras.weights``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_packages(graph):
    # loops through several modules of two packages (weights -> models -> backend -> weights) count too
    files, imports = graph
    packages, where = {}, {}
    for module, targets in imports.items():
        for target, line in targets.items():
            source, destination = package_of(module), package_of(target)
            if source != destination:
                packages.setdefault(source, {})[destination] = line
                where.setdefault((source, destination), _where(files, module, line) + f" ({module} -> {target})")
    cycles = import_cycles(packages)
    lines = [" -> ".join(f"{a} [{where[a, b]}]" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
             for cycle in cycles]
    assert not cycles, "import loops between packages:\n" + "\n".join(lines)


def test_the_checks_catch_what_they_are_for(tmp_path):
    # the same functions on a made-up tree: an upward import inside a function, a relative import, a loop
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from pkg.sub import high\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "high.py").write_text("from . import other\n")
    (package / "sub" / "other.py").write_text("import pkg.sub.high\nfrom pkg import low, missing\nimport numpy\n")
    modules = {name: package / path for name, path in [
        ("pkg", "__init__.py"), ("pkg.low", "low.py"), ("pkg.sub", "sub/__init__.py"),
        ("pkg.sub.high", "sub/high.py"), ("pkg.sub.other", "sub/other.py")]}
    imports = {module: imports_of(module, path, modules) for module, path in modules.items()}
    assert imports["pkg.low"] == {"pkg.sub.high": 2}
    assert imports["pkg.sub.high"] == {"pkg.sub.other": 1}
    assert imports["pkg.sub.other"] == {"pkg.sub.high": 1, "pkg.low": 2, "pkg": 2}
    assert import_cycles(imports) == [["pkg.low", "pkg.sub.high", "pkg.sub.other", "pkg.low"]]
    assert layer_of("sd_keras.weights.some_new_reader") == LOADING and layer_of("sd_keras.cli.upscale") == FRONT_ENDS
    assert layer_of("sd_keras") == API and layer_of("sd_keras.brand_new") is None and layer_of("numpy") is None
    assert package_of("sd_keras.weights.lora") == "sd_keras.weights" and package_of("sd_keras.loop") == "sd_keras.loop"
