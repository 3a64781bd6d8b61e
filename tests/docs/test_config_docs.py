"""docs/configuration.md is generated from .env's comments (scripts/config_docs.py): the committed page must be
what the current .env gives, and the generator must carry every setting and its comment."""
import re
import subprocess
import sys
from pathlib import Path

from scripts import config_docs

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_page_is_what_env_generates():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + "\n(regenerate: .venv/bin/python scripts/config_docs.py)"


def test_every_setting_of_env_is_on_the_page_with_its_default():
    env = (ROOT / ".env").read_text()
    page = config_docs.generate(env)
    settings = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", env, flags=re.M)
    assert settings
    for name, value in settings:
        assert f"\n{name}={value}\n" in page, name
        assert f"`{name}`" in page, name


def test_a_comment_describes_the_settings_below_it_and_a_section_starts_a_heading():
    page = config_docs.generate(
        "# Intro line.\n\n"
        "# Seconds between polls.\nPOLL=1\n"
        "RETRY=2\n"
        "# (Also read by the relay.)\n\n"
        "LONELY=x\n"
        "# An optional endpoint.\n# ENDPOINT=http://localhost:4318\n\n"
        "# --- compose only (docker-compose.yml); a native run ignores these.\n# The admin's password.\nPASSWORD=p\n")
    assert "### `POLL`, `RETRY`\n\nSeconds between polls.\n(Also read by the relay.)\n\n```sh\nPOLL=1\nRETRY=2\n```" \
        in page
    assert "### `LONELY`\n\n```sh\nLONELY=x\n```" in page
    assert "### `ENDPOINT`\n\nAn optional endpoint.\n\n```sh\n# ENDPOINT=http://localhost:4318" in page
    # A section's comment runs up to its first setting: the section's text.
    assert "## Compose only\n\n(docker-compose.yml); a native run ignores these.\nThe admin's password.\n\n" \
        "### `PASSWORD`" in page
    assert page.index("Intro line.") < page.index("## Settings")


def test_markup_in_a_comment_is_shown_as_text_but_code_stays_code():
    page = config_docs.generate("# OTEL_BSP_* and user-<N>, see `a_b*`.\nX=1\n")
    assert r"OTEL\_BSP\_\* and user-&lt;N&gt;" not in page  # only what Markdown would read is escaped
    assert r"OTEL\_BSP\_\* and user-&lt;N>, see `a_b*`." in page


def test_a_line_that_is_neither_a_setting_nor_a_comment_is_an_error():
    try:
        config_docs.generate("# A comment.\nnot a setting\n")
    except ValueError as error:
        assert "not a setting" in str(error)
    else:
        raise AssertionError("accepted a malformed line")
