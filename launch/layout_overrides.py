"""Print a layout overlay (launch/configs/layouts/*.yaml) as dotted overrides, one a line.

``scope-ray train`` takes one recipe plus ``section.key=value`` overrides; a layout is a
partial config tree that moves actors between GPUs and nodes, so it is applied as
overrides after the recipe. Values are compact JSON (valid YAML, no spaces), so each
override is one shell word::

    mapfile -t layout < <(python launch/layout_overrides.py launch/configs/layouts/node8.yaml)
    scope-ray train --config launch/configs/<recipe>.yaml "${layout[@]}"

Whole values are replaced, not merged: ``resources: {teacher_node: 1}`` replaces the
recipe's resources mapping, which is what a placement change means.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def layout_overrides(path: str | Path) -> list[str]:
    """``section.key=<json>`` for every leaf key of the two-level config tree in ``path``."""
    data: Any = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a layout is a mapping of config sections")
    out: list[str] = []
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {section}: expected a mapping of keys")
        for key, value in values.items():
            out.append(f"{section}.{key}={json.dumps(value, separators=(',', ':'))}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: layout_overrides.py LAYOUT.yaml", file=sys.stderr)
        return 2
    for line in layout_overrides(argv[0]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
