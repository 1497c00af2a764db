"""Install axe-core, the accessibility engine the page's browser tests run in the page, into a
directory (``.venv/share/axe-core`` by scripts/setup.sh).

axe-core is JavaScript that neither Debian nor PyPI ships; the npm registry does. This fetches
the pinned release's tarball from it, checks it against the integrity hash pinned here (the
registry's own ``dist.integrity``), and keeps ``axe.min.js`` (and its licence) only. It is not
vendored in the repository: half a megabyte of minified code that only the tests use (its
licence, MPL-2.0, would allow it, with the licence beside it). Nothing from npm is run.

    python scripts/install_axe.py .venv/share/axe-core      # then .../axe.min.js

Exit status 0 when it is there (installed now or before), 1 when it cannot be.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "4.14.1"
REGISTRY = "https://registry.npmjs.org"
INTEGRITY = (
    "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
)
FILES = ("axe.min.js", "LICENSE")


def install(directory: Path) -> Path:
    script = directory / "axe.min.js"
    marker = directory / f".version-{VERSION}"
    if script.is_file() and marker.is_file():
        return script
    url = f"{REGISTRY}/axe-core/-/axe-core-{VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (a pinned https URL)
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{url}: sha512 {digest} is not the pinned {INTEGRITY}")
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(".version-*"):
        old.unlink()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in FILES:
            member = archive.extractfile(f"package/{name}")
            if member is None:
                raise SystemExit(f"{url}: no package/{name} inside")
            partial = directory / f"{name}.partial"
            partial.write_bytes(member.read())
            os.replace(partial, directory / name)
    marker.touch()
    return script


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(install(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
