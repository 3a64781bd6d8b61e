"""Each variant of scripts/broken_variants.py still breaks code that exists: its text is in its file exactly once
and the tests it names exist. Without this, a variant whose code moved stops the script only when someone runs it."""
import ast
import re
import sys

import pytest

from harness.stack import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import broken_variants


@pytest.mark.parametrize("name", list(broken_variants.VARIANTS))
def test_the_variant_breaks_text_that_is_in_its_file_once_and_names_tests_that_exist(name):
    path, text, replacement, tests = broken_variants.VARIANTS[name]
    assert (ROOT / path).read_text().count(text) == 1, f"{name}: update the variant to the code of {path}"
    assert text != replacement
    for test in tests:
        file, _, function = test.partition("::")
        assert (ROOT / file).is_file(), f"{name}: no {file}"
        if function:
            defined = {node.name for node in ast.walk(ast.parse((ROOT / file).read_text()))
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            assert re.sub(r"\[.*\]$", "", function) in defined, f"{name}: no test {function} in {file}"
