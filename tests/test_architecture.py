"""The layers the README's tree shows, held by the imports: every module in a layer, each
layer importing only those below it (api -> recommend -> engine; tools -> engine), no cycles,
a scheduler that decides without llama.cpp, and an engine that knows no answer format."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVICE = ROOT / "service"
# Each layer and the layers it may import. Shared by all: settings, logs, metrics, startup (which import
# no layer). The entry point (service/__main__.py) may import everything.
LAYERS = {
    "service.api": {"service.recommend", "service.engine"},
    "service.recommend": {"service.engine"},
    "service.engine": set(),
    "service.tools": {"service.engine"},
}
SHARED = {"service.settings", "service.logs", "service.metrics", "service.startup"}


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def service_imports() -> dict[str, set[str]]:
    """Each service module and the service modules it imports (at any depth of the file)."""
    modules = {module_name(path): path for path in SERVICE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found.update(target for target in targets if target in modules and target != name)
        graph[name] = found
    return graph


def test_no_import_cycle_in_service() -> None:
    graph = service_imports()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if target.startswith(name + "."):
                continue  # a package importing its own modules is not a cycle
            assert state.get(target) != "open", " -> ".join([*path, name, target])
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_lives_in_a_layer_or_is_shared() -> None:
    loose = {m for m in service_imports() if layer_of(m) is None} - SHARED - {"service", "service.__main__"}
    assert not loose, f"put these in service/api, recommend, engine or tools: {sorted(loose)}"


def test_layers_import_only_the_layers_below_them() -> None:
    for name, targets in service_imports().items():
        layer = layer_of(name)
        if layer is None:
            if name in SHARED:
                assert all(layer_of(t) is None for t in targets), (name, targets)
            continue
        allowed = LAYERS[layer] | {layer}
        wrong = {t for t in targets if layer_of(t) not in allowed and t not in SHARED}
        assert not wrong, f"{name} imports {sorted(wrong)}"


def test_the_scheduler_and_the_thread_governor_decide_without_llama_cpp() -> None:
    code = (
        "import sys, service.engine.scheduler, service.engine.cpu_share; "
        "print('llama_cpp' in sys.modules, 'numpy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# What only the answer format (service/recommend/answer.py) knows: its grammar's name, its files,
# its schema and its keys. A second answer format must not need a change in the engine (#23).
ANSWER_FORMAT_WORDS = re.compile(r"challenge|schema|grammars/|recommend", re.IGNORECASE)


def test_the_engine_knows_nothing_of_the_answer_format() -> None:
    mentions = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((SERVICE / "engine").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if ANSWER_FORMAT_WORDS.search(line)
    ]
    assert not mentions, "\n".join(mentions)


def test_the_decode_thread_receives_token_ids_and_never_renders_a_template() -> None:
    """Issue #23: prompts are rendered and tokenized on the caller's side of the queue."""
    graph = service_imports()
    assert not graph["service.engine.decode_loop"] & {"service.engine.chat_template", "service.engine.tokens"}
    assert ".prompt_tokens(" not in (SERVICE / "engine" / "decode_loop.py").read_text(encoding="utf-8")
