"""No development history where users and maintainers read: README, docs, .env, the code, its comments and the
tests say what the system is and why, not which issue, commit or branch brought it. Figures keep one line naming
the commit they were measured at (a line starting with `Measured`), so a figure can be regenerated and compared."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["README.md", ".env", "gateway.py", "mkdocs.yml", "docs", "common", "order_svc", "payment_svc", "proxy",
           "ops", "bench", "harness", "scripts", "deploy", "tests", "schema.sql", "docker-compose.yml", "Dockerfile",
           "openapi.yaml", "Shopping.postman_collection.json", "run.sh", "test.sh", "requirements.txt", "setup.cfg",
           "pytest.ini", "ruff.toml", ".ci"]
# Third-party and generated files: not this project's words.
SKIPPED_PARTS = {"node_modules", "__pycache__"}
SKIPPED_NAMES = {"package-lock.json"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".cfg", ".ini", ".txt", ".sql", ".js", ".json",
                 ".lua", ".conf", ".env", ".j2", ""}

ISSUE = re.compile(r"\bissues?\s+#?\d+|#\d+'s\b|\bissue\s+#?\d+'s\b", re.I)
BRANCH = re.compile(r"(?<![\w/.-])wt/[\w.-]+")
BEFORE_AFTER = re.compile(r"\b(before|after) this (change|commit)\b|\bbenchmark'?s before\b|\bthe code before\b",
                          re.I)
# What a commit hash looks like in prose: 7-12 or 40 hex digits, with a digit and a letter, standing alone.
HEX = re.compile(r"(?<![\w-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])([0-9a-f]{40}|[0-9a-f]{7,12})(?![\w-])")
# Hex that is not a commit: W3C trace contexts, UUIDs, digests and checksums, with what names them.
NOT_COMMITS = [
    re.compile(r"\b[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\b"),  # traceparent
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),  # UUID
    re.compile(r"\b(sha\d+|sha|md5|digest|checksum|integrity|fingerprint)[\w\s\"':=(-]{0,12}[0-9a-f]{7,}", re.I),
]
MEASURED = re.compile(r"^\W*Measured\b")


def history_in(line: str) -> list[str]:
    """The development history `line` speaks of: issue numbers, branch names, before/after a change, hashes."""
    found = [m.group(0) for pattern in (ISSUE, BRANCH, BEFORE_AFTER) for m in pattern.finditer(line)]
    if MEASURED.match(line):
        return found
    for pattern in NOT_COMMITS:
        line = pattern.sub(" ", line)
    return found + [m.group(0) for m in HEX.finditer(line)]


def scanned_files():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        path = ROOT / name
        if SKIPPED_PARTS & set(path.parts) or path.name in SKIPPED_NAMES or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in {".env", "Dockerfile"}:
            yield path


def test_no_issue_number_commit_hash_or_branch_name_in_the_readme_docs_env_or_code():
    hits = []
    for path in scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for found in history_in(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {found!r} in {line.strip()[:120]}")
    assert not hits, "development history:\n" + "\n".join(hits)


# The phrases are put together here so that this file does not hold what it looks for.
ISSUE_WORD, HASH = "iss" + "ue", "3355" + "afe"


@pytest.mark.parametrize("line", [
    f"the {ISSUE_WORD} 14 lever", f"({ISSUE_WORD} #5)", f"{ISSUE_WORD.capitalize()}s 11 and 14",
    f"at commit `{HASH}`", f"git archive {HASH} | tar -x", "a" * 3 + "0123456789abcdef0123456789abcdef01234" + "b" * 0,
    "on the branch " + "wt" + "/bite2", "kept as the bench" + "mark's before", "as before this " + "change",
])
def test_history_is_found(line):
    assert history_in(line), line


@pytest.mark.parametrize("line", [
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "request id 3f2c0b1e-7a4d-4c1b-9e2f-0a1b2c3d4e5f",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d2c15b0f00a08",
    "password 0123456789abcdef",  # 16 hex digits: no commit's length here
    f"Measured 2026-12-02 at commit `{HASH}` on a 2-core machine.",
    "the publish window drains after the commit", "1201+19#3", "deadline 20 s", "SELECT 1",
])
def test_what_is_not_history_is_not_found(line):
    assert not history_in(line), line
