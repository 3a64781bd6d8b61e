"""docs/testing.md lists exactly the broken variants scripts/broken_variants.py runs, each with its file."""
from pathlib import Path

from scripts.broken_variants import VARIANTS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
HEADING = "## Tests that can fail: broken variants"


def variants_table(text: str) -> dict[str, str]:
    """{variant: the file it breaks} from the first table under HEADING."""
    lines = text[text.index(HEADING):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = {}
    for row in lines[start + 2:]:  # past the header and its separator, to the table's end
        if not row.startswith("| "):
            break
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        table[cells[0]] = cells[1].strip("`")
    return table


def test_the_page_lists_every_broken_variant_with_its_file_and_no_other():
    listed = variants_table(PAGE.read_text())
    expected = {name.replace("|", "/"): path for name, (path, _, _, _) in VARIANTS.items()}
    assert set(listed) == set(expected), {"missing": set(expected) - set(listed), "gone": set(listed) - set(expected)}
    assert listed == expected


def test_a_variant_missing_from_the_page_is_noticed():
    text = PAGE.read_text()
    first = next(iter(VARIANTS))
    without = "\n".join(line for line in text.splitlines() if not line.startswith(f"| {first} |"))
    assert first in variants_table(text) and first not in variants_table(without)
