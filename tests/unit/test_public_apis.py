"""The product code keeps to what its libraries document, and to its own layers.

A library's private names (`_connections`, `_read_buffer_size`, `_close_called`, ...) change or vanish in any
release without notice; the code that reads them keeps running and breaks silently. So no product module may
read `x._name` unless `x` is `self` or `cls` and the name is the project's own (assigned or defined in its class or
a project class it derives from), nor import an underscore name of tornado, aio-pika, aiormq, aiopg or psycopg2.

The layers: the database, broker and observability packages never import the web package (a worker or a CLI
must not drag in Tornado's request handling), nothing in `common/` imports a service, the gateway's proxy, the
gateway or the operator tools, and the services import neither each other nor the proxy."""
import ast
from collections.abc import Iterable
from pathlib import Path

from harness.stack import ROOT

PRODUCT = ("common", "order_svc", "payment_svc", "proxy", "ops", "gateway.py")
LIBRARIES = ("tornado", "aio_pika", "aiormq", "aiopg", "psycopg2")
# The documented API of named tuples (and of `os`) begins with an underscore so as not to clash with field names.
DOCUMENTED = {"_replace", "_asdict", "_fields", "_field_defaults", "_make", "_exit"}
# Tornado internals without the underscore (undocumented; the issue that removed them names them): flagged too.
UNDOCUMENTED_ATTRIBUTES = {"wildcard_router", "default_router", "target_kwargs"}
UNDOCUMENTED_IMPORTS = {("tornado.http1connection", "parse_int")}

# Known offenders ('<file>: <expression>'), each until the change that removes it lands: the test fails on any
# other use, and on an entry here that no longer offends, so that this list only shrinks. Empty: keep it so.
KNOWN_PRIVATE_USES: set[str] = set()

# Layers: (a package or module prefix, the prefixes it must not import).
LAYERS = [
    ("common.domain", ("common.web", "common.db", "common.broker", "common.observability", "common.runtime")),
    ("common.db", ("common.web",)),
    ("common.broker", ("common.web",)),
    ("common.observability", ("common.web",)),
    ("common", ("order_svc", "payment_svc", "proxy", "gateway", "ops")),
    ("order_svc", ("payment_svc", "proxy", "gateway")),
    ("payment_svc", ("order_svc", "proxy", "gateway")),
]
# Imports that break a layer: none, and a new one fails the test (this set may only shrink).
KNOWN_LAYER_BREACHES: set[str] = set()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def product_files() -> list[Path]:
    files = []
    for part in PRODUCT:
        path = ROOT / part
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Classes:
    """The project's classes by name: the names each assigns or defines, and the names of its bases."""

    def __init__(self, trees: Iterable[ast.Module]) -> None:
        self.names: dict[str, set[str]] = {}
        self.bases: dict[str, set[str]] = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    self.names.setdefault(node.name, set()).update(own_names(node))
                    self.bases.setdefault(node.name, set()).update(
                        base.id if isinstance(base, ast.Name) else base.attr
                        for base in node.bases if isinstance(base, ast.Name | ast.Attribute))

    def defines(self, class_name: str, name: str, seen: frozenset = frozenset()) -> bool:
        """Whether `class_name` or a project class it derives from assigns or defines `name`."""
        if class_name in seen or class_name not in self.names:
            return False
        return name in self.names[class_name] or any(
            self.defines(base, name, seen | {class_name}) for base in self.bases[class_name])


def own_names(cls: ast.ClassDef) -> set[str]:
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node is not cls:
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)  # class-level assignments (and locals, harmlessly)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return names


class PrivateUses(ast.NodeVisitor):
    def __init__(self, where: str, classes: Classes) -> None:
        self.where, self.classes = where, classes
        self.found: list[str] = []
        self.class_stack: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.class_stack.append(node.name)
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (is_private(node.attr) and node.attr not in DOCUMENTED and not self.owned(node)) \
                or node.attr in UNDOCUMENTED_ATTRIBUTES:
            self.found.append(f"{self.where}: {ast.unparse(node)}")
        self.generic_visit(node)

    def owned(self, node: ast.Attribute) -> bool:
        return (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and bool(self.class_stack)
                and self.classes.defines(self.class_stack[-1], node.attr))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] in LIBRARIES and any(map(is_private, parts)):
                self.found.append(f"{self.where}: import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] not in LIBRARIES:
            return
        for alias in node.names:
            if any(map(is_private, [*module.split("."), alias.name])) or (module, alias.name) in UNDOCUMENTED_IMPORTS:
                self.found.append(f"{self.where}: from {module} import {alias.name}")


def private_uses(sources: dict[str, str]) -> list[str]:
    """'<where>: <expression>' of each private use in `sources` ({name: source code})."""
    trees = {where: ast.parse(source) for where, source in sources.items()}
    classes = Classes(trees.values())
    found = []
    for where, tree in trees.items():
        visitor = PrivateUses(where, classes)
        visitor.visit(tree)
        found += visitor.found
    return found


def imports(tree: ast.Module, module: str) -> list[tuple[str, set[str]]]:
    """(the module an import statement names, the modules it may bring in) of each import in `tree`, a relative
    one resolved against `module` (`from a import b` may bring in `a` and `a.b`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, {alias.name}) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[:-node.level]
                base = ".".join([*package, base] if base else package)
            found.append((base, {base} | {f"{base}.{alias.name}" for alias in node.names}))
    return found


def layer_breaches(sources: dict[str, str]) -> list[str]:
    """'<module> imports <module>' for each import `LAYERS` forbids in `sources` ({module name: source})."""
    found = set()
    for module, source in sources.items():
        for named, brought in imports(ast.parse(source), module):
            for layer, forbidden in LAYERS:
                if within(module, layer) and any(within(imported, other) and not within(imported, layer)
                                                 for imported in brought for other in forbidden):
                    found.add(f"{module} imports {named}")
    return sorted(found)


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def product_sources(key) -> dict[str, str]:
    return {key(path): path.read_text() for path in product_files()}


def test_the_product_code_uses_no_private_name_of_its_libraries_or_of_other_objects():
    found = set(private_uses(product_sources(lambda path: str(path.relative_to(ROOT)))))
    assert sorted(found - KNOWN_PRIVATE_USES) == [], "private names used"
    assert sorted(KNOWN_PRIVATE_USES - found) == [], "known offenders gone: take them off KNOWN_PRIVATE_USES"


def test_a_planted_private_use_is_caught_and_the_project_s_own_names_are_not():
    planted = {"planted.py": '''
import tornado._locale_data
from aiormq.connection import parse_int
from tornado.http1connection import parse_int as parse, HTTP1Connection
from tornado.iostream import _ERRNO_WOULDBLOCK

class Base:
    def __init__(self):
        self._mine = 0

class Server(Base, HTTPServer):
    _limit = 3

    def _helper(self):
        return self._mine + self._limit + self._helper.__name__

    def count(self, stream, row):
        inner = lambda: self._connections
        return (len(self._connections) + stream._read_buffer_size + inner() + row._replace(a=1).a
                + self.app.wildcard_router.rules[0].target_kwargs)

def outside(server):
    return server._mine
'''}
    assert private_uses(planted) == [
        "planted.py: import tornado._locale_data",
        "planted.py: from tornado.http1connection import parse_int",
        "planted.py: from tornado.iostream import _ERRNO_WOULDBLOCK",
        "planted.py: self._connections",
        "planted.py: self._connections",
        "planted.py: stream._read_buffer_size",
        "planted.py: self.app.wildcard_router.rules[0].target_kwargs",
        "planted.py: self.app.wildcard_router",
        "planted.py: server._mine",
    ]


def test_each_layer_imports_only_what_is_below_it():
    found = set(layer_breaches(product_sources(module_name)))
    assert sorted(found - KNOWN_LAYER_BREACHES) == [], "imports across the layers"
    assert sorted(KNOWN_LAYER_BREACHES - found) == [], "known breaches gone: take them off KNOWN_LAYER_BREACHES"


def test_a_planted_layer_breach_is_caught():
    planted = {
        "common.db.planted": "from common.web.envelope import BaseHandler\nimport common.db.pg_hosts\n",
        "common.domain.planted": "from common.domain import errors\nfrom common.runtime import endpoints\n",
        "common.runtime.planted": "from ops import provision\nfrom common.web import app\n",
        "order_svc.planted": "from payment_svc.repo import accounts\nfrom . import repo\nimport order_svc.service\n",
        "payment_svc.planted": "import proxy.server\n",
    }
    assert layer_breaches(planted) == [
        "common.db.planted imports common.web.envelope",
        "common.domain.planted imports common.runtime",
        "common.runtime.planted imports ops",
        "order_svc.planted imports payment_svc.repo",
        "payment_svc.planted imports proxy.server",
    ]
