"""The README documents every setting and the two commands CI relies on."""

from __future__ import annotations

import pytest

from streams.runtime.settings import env_documentation, settings_markdown
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name, _, _ in env_documentation() if f"`{name}`" not in readme]
    assert missing == []


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- settings:start", 1)[1].split("-->", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block.strip() == settings_markdown(), "README settings table is stale: run `surge config --markdown`"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
