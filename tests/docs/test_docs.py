"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, or a page missing from the
navigation, fails the build (mkdocs.yml's `validation` turns each into a warning, strict mode into an error)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file"]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, str(config), "--site-dir", str(site)], capture_output=True, text=True,
                          timeout=120)


def copy_of_the_docs(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ copied, to be broken one way without touching the checkout."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    return tmp_path / "mkdocs.yml"


def test_the_site_builds_strictly_with_every_page_in_the_navigation(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    pages = {path.stem for path in (ROOT / "docs").glob("*.md")}
    built = {path.parent.name for path in (tmp_path / "site").glob("*/index.html")}
    assert pages - {"index"} <= built, f"pages not built: {pages - {'index'} - built}"


def test_a_broken_link_fails_the_build(tmp_path):
    config = copy_of_the_docs(tmp_path)
    page = tmp_path / "docs" / "glossary.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr


def test_a_broken_anchor_fails_the_build(tmp_path):
    config = copy_of_the_docs(tmp_path)
    page = tmp_path / "docs" / "glossary.md"
    page.write_text(page.read_text() + "\nSee [the flow](architecture.md#no-such-section).\n")
    done = build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-section" in done.stderr


def test_a_page_missing_from_the_navigation_fails_the_build(tmp_path):
    config = copy_of_the_docs(tmp_path)
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    done = build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "orphan.md" in done.stderr


README_SECTION = re.compile(r'(?<!its )README,? "([^"]+)"')


def test_every_readme_section_the_tree_names_is_a_heading_of_the_readme():
    headings = {line.lstrip("#").strip() for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("#")}
    named = subprocess.run(["git", "grep", "-n", "-I", "-E", r'README,? "', "--", ".", ":!*node_modules*"], cwd=ROOT,
                           capture_output=True, text=True).stdout.splitlines()
    missing = [line for line in named for section in README_SECTION.findall(line) if section not in headings]
    assert not missing, "README sections that are not there:\n" + "\n".join(missing)


# A path of this repository in backticks; "the operator's `docs/...`" names another project's file.
REPOSITORY_PATH = re.compile(r"(?<!'s )`((?:common|order_svc|payment_svc|proxy|ops|bench|harness|scripts|deploy|tests"
                             r"|docs)/[\w./-]*\w)(?:::\w+)?`")


def test_every_file_the_readme_and_docs_name_exists():
    named = {(page.relative_to(ROOT), path) for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for path in REPOSITORY_PATH.findall(page.read_text())}
    assert len(named) > 50
    missing = sorted(f"{page}: {path}" for page, path in named if not (ROOT / path).exists())
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)
