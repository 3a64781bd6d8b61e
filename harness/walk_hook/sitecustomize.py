"""Loaded at start-up by every service process of `python -m harness.walk` (this directory is put first on
PYTHONPATH): writes each hop of the amount `SHOP_WALK_AMOUNT` through the project's code to `SHOP_WALK_LOG`.

A hop is one call of a project function (anything under `SHOP_WALK_ROOT` outside `.venv`) that takes the amount
in an argument other than `self`/`cls`, or returns it: the value itself, a text or bytes with it written in, or a
container, named tuple, dataclass or message that holds one of those, or a function or `functools.partial` that
has one of those in its closure or its bound arguments (a closure passes the amount on as surely as an
argument does). A function calling itself is the same code, not a hop. A coroutine counts once, when it starts
and when it returns, not at each resumption between them. Comprehensions and generator expressions are not
calls of their own (Python 3.12 inlines comprehensions), so the count does not depend on the Python version."""
import dataclasses
import dis
import functools
import os
import sys
import threading
import time
import types
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

_EXPRESSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def _install(amount_text: str, log_path: str, root: str) -> None:
    try:
        amount = Decimal(amount_text)
    except InvalidOperation:
        sys.exit(f"SHOP_WALK_AMOUNT is not a number: {amount_text!r}")
    needle = amount_text.encode()
    venv = os.path.join(root, ".venv")
    here = os.path.dirname(os.path.abspath(__file__))
    log = open(log_path, "a", buffering=1)  # one line per hop, written at once: the process may be killed
    own: dict = {}                           # code object -> is it the project's?
    starts: dict = {}                        # code object of a coroutine -> offset of its first RESUME
    counted: set = set()                     # ids of the running frames whose return is not a hop
    generator_flags = 0x20 | 0x80 | 0x200    # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR

    def holds(value, depth=0) -> bool:
        if isinstance(value, Decimal):
            return value == amount
        if isinstance(value, str):
            return amount_text in value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return needle in bytes(value)
        if depth >= 6 or isinstance(value, (int, float, type(None))):
            return False
        if isinstance(value, Mapping):
            return any(holds(v, depth + 1) for v in list(value.values())[:100])
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(holds(v, depth + 1) for v in list(value)[:100])
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return any(holds(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value))
        if isinstance(value, functools.partial):
            return holds(value.args, depth + 1) or holds(value.keywords, depth + 1)
        if isinstance(value, types.FunctionType):
            return any(holds(contents(cell), depth + 1) for cell in value.__closure__ or ())
        body = getattr(value, "body", None)  # an aio-pika message, a Tornado request
        return isinstance(body, bytes) and needle in body

    def contents(cell):
        try:
            return cell.cell_contents
        except ValueError:  # a cell not filled yet
            return None

    def is_own(code) -> bool:
        known = own.get(code)
        if known is None:
            path = code.co_filename
            known = own[code] = (path.startswith(root) and not path.startswith((venv, here))
                                 and code.co_name not in _EXPRESSIONS)
        return known

    def first_resume(code) -> int:
        offset = starts.get(code)
        if offset is None:
            offset = starts[code] = next(i.offset for i in dis.get_instructions(code)
                                         if i.opname == "RESUME" and i.arg == 0)
        return offset

    def record(frame, how: str) -> None:
        code = frame.f_code
        where = os.path.relpath(code.co_filename, root)
        log.write(f"{time.time():.6f}\t{os.getpid()}\t{code.co_qualname}\t{where}:{code.co_firstlineno}\t{how}\n")

    def arguments(frame) -> list:
        code = frame.f_code
        count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
        names = code.co_varnames[:count]
        return [frame.f_locals.get(name) for name in names if name not in ("self", "cls")]

    def profile(frame, event, arg):
        if event not in ("call", "return") or not is_own(frame.f_code):
            return
        code = frame.f_code
        resumable = code.co_flags & generator_flags
        if event == "call":
            if resumable and frame.f_lasti > first_resume(code):
                return  # a resumption, not a call
            caller = frame.f_back
            while caller is not None and caller.f_code.co_name in _EXPRESSIONS:
                caller = caller.f_back  # `to_json` calls itself from inside a generator expression
            if caller is not None and caller.f_code is code:
                counted.add(id(frame))  # recursion: neither its call nor its return is a hop
                return
            if holds(arguments(frame)):
                record(frame, "takes it")
                counted.add(id(frame))
            return
        if resumable and code.co_code[frame.f_lasti] != dis.opmap["RETURN_VALUE"]:
            return  # a suspension
        if id(frame) in counted:
            counted.discard(id(frame))
        elif holds(arg):
            record(frame, "returns it")

    sys.setprofile(profile)
    threading.setprofile(profile)


if os.environ.get("SHOP_WALK_AMOUNT"):
    _install(os.environ["SHOP_WALK_AMOUNT"], os.environ["SHOP_WALK_LOG"], os.environ["SHOP_WALK_ROOT"])
