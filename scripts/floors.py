"""
Print pip constraints pinning each of txacme's dependencies to its declared floor.

Run by ``scripts/test-minimum`` with the interpreter of a virtualenv holding the txacme wheel:
the requirements are read from the installed metadata (``importlib.metadata``), so what is tested is
what ``pyproject.toml`` declares, not a list kept by hand.

    python scripts/floors.py [EXTRA ...]    the required dependencies and those of each EXTRA
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires

# name [extras] specifiers [; marker], as written in Requires-Dist (PEP 508, no URLs here).
REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?(?P<spec>[^;)]*)\)?"
    r"\s*(?:;(?P<marker>.*))?$"
)
EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
FLOOR = re.compile(r"(?:>=|==|~=)\s*([0-9][A-Za-z0-9.]*)")


def normalize(name: str) -> str:
    """The PEP 503 form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple[int, ...]:
    """Order plain release numbers (the floors are plain releases)."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def floors(requirements: list[str], extras: set[str]) -> dict[str, str]:
    """Map each requirement applying to the given extras to its floor (the highest if repeated)."""
    found: dict[str, str] = {}
    for line in requirements:
        match = REQUIREMENT.match(line)
        if match is None:
            raise SystemExit(f"cannot read the requirement {line!r}")
        marker = match.group("marker") or ""
        extra = EXTRA.search(marker)
        if extra is not None and extra.group(1) not in extras:
            continue
        floor = FLOOR.search(match.group("spec"))
        if floor is None:
            raise SystemExit(f"{line!r} has no lower bound: every dependency needs a tested floor")
        name = normalize(match.group("name"))
        if name not in found or version_key(floor.group(1)) > version_key(found[name]):
            found[name] = floor.group(1)
    return found


def main(argv: list[str]) -> int:
    requirements = requires("txacme")
    if not requirements:
        raise SystemExit("txacme's metadata declares no requirements: is the wheel installed?")
    for name, version in sorted(floors(requirements, set(argv)).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
