"""The README's settings table is generated, and must not drift from the code."""

import os

from poolclient.config import settings_table
from tests.helpers import ROOT


def test_readme_settings_table_matches_the_code():
    """Every row of ``python -m poolclient`` appears verbatim in the README."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    missing = [row for row in settings_table().splitlines() if row not in readme]
    assert missing == []
