"""The README's configuration table matches the settings the code reads."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from streams.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_with_its_default():
    rows = dict(re.findall(r"^\| `(FRESHREC_[A-Z0-9_]+)` \| `([^`]*)` \|", README.read_text(), re.M))
    expected = {}
    for f in fields(Settings):
        default = f.default
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, tuple):
            shown = ",".join(f"{v:.0f}" if float(v).is_integer() else f"{v:g}" for v in default)
        elif isinstance(default, float):
            shown = f"{default:.0f}" if default.is_integer() else f"{default:g}"
        else:
            shown = str(default)
        expected[ENV_PREFIX + f.name.upper()] = shown
    documented = {k: v for k, v in rows.items() if k != "FRESHREC_LOG_LEVEL"}
    assert documented == expected
