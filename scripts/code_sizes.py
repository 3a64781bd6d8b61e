"""Module and function sizes of the services' code (common/, order_svc/, payment_svc/, proxy/, gateway.py), in lines:
how big the pieces a newcomer reads are, to compare two commits.

    python3 scripts/code_sizes.py [DIR]      DIR: a checkout, e.g. a `git archive` of another commit; default this one

Standard library only, so that it runs on an old checkout without its .venv."""
import ast
import sys
from pathlib import Path

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
FILES = sorted([*ROOT.glob("common/**/*.py"), *ROOT.glob("order_svc/*.py"), *ROOT.glob("payment_svc/*.py"),
                *ROOT.glob("proxy/*.py"), ROOT / "gateway.py"])
LONG = 40


def sizes():
    """({module: lines}, [(definition, lines)]): a list, as classes of one module may have methods of one name."""
    modules, definitions = {}, []
    for path in FILES:
        name = str(path.relative_to(ROOT))
        text = path.read_text()
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class " if isinstance(node, ast.ClassDef) else ""
                definitions.append((f"{kind}{name}:{node.name}", node.end_lineno - node.lineno + 1))
    return modules, definitions


def main():
    modules, definitions = sizes()
    functions = sorted(n for name, n in definitions if not name.startswith("class "))
    print(f"{len(modules)} modules, {sum(modules.values())} lines; largest: "
          + ", ".join(f"{name} {n}" for name, n in sorted(modules.items(), key=lambda kv: -kv[1])[:3]))
    print(f"{len(functions)} functions: median {functions[len(functions) // 2]} lines, "
          f"90th percentile {functions[int(len(functions) * 0.9)]}, over {LONG}: {sum(n > LONG for n in functions)}")
    for name, n in sorted(definitions, key=lambda kv: -kv[1]):
        if not name.startswith("class ") and n >= functions[int(len(functions) * 0.98)]:
            print(f"  {n:4}  {name}")
    for name in ("class common/broker/connection.py:Broker", "order_svc/service.py:place_order",
                 "payment_svc/service.py:receive_requests"):
        print(f"  {dict(definitions).get(name, '-'):>4}  {name}")


main()
