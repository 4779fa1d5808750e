"""Print a layout overlay (launch/configs/layouts/*.yaml) as dotted overrides, one a line.

``scope-ray train`` takes one recipe plus ``section.key=value`` overrides; a layout is
applied as overrides after the recipe (``scope_ray.config.overlay_overrides``)::

    mapfile -t layout < <(python launch/layout_overrides.py launch/configs/layouts/node8.yaml)
    scope-ray train --config launch/configs/<recipe>.yaml "${layout[@]}"
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from a checkout (launch/ray_job/submit.sh): the package sits beside it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scope_ray.config import overlay_overrides  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: layout_overrides.py LAYOUT.yaml", file=sys.stderr)
        return 2
    for line in overlay_overrides(argv[0]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
