"""Build the optional compiled order book: `python -m ops.build_engine`.

Copies the book modules (`market.book_select.SOURCES`: `market/level.py`,
`book_state.py`, `book.py`, and `book_order_native.py` as `book_order`) into
`market/_native/` with their imports pointed at each other, stamps the copy of
`book.py` with the sources' hash, and compiles them with mypyc (from the `mypy`
package) and the C compiler into extension modules there; the copies and the C
sources are removed after. `market.book_select` then picks the compiled book up
while the stamp matches the sources. Needs a C compiler and the Python headers;
without them it fails and the pure book stays in use. mypyc comes with the
`mypy` package (the `test` extras). `--clean` removes a build.

    python -m ops.build_engine [--clean]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from market.book_select import NATIVE_PACKAGE, SOURCES, source_hash

ROOT = Path(__file__).resolve().parents[1]
MARKET = ROOT / "market"
NATIVE = MARKET / "_native"
_IMPORT = re.compile(r"^from market\.(" + "|".join(SOURCES) + r") import", re.MULTILINE)


def _mypyc_version() -> str:
    return importlib.metadata.version("mypy")


def _write_copies() -> list[str]:
    """The sources as modules of `market._native`; their paths."""
    NATIVE.mkdir()
    (NATIVE / "__init__.py").write_text(
        '"""The compiled order book (built by `python -m ops.build_engine`; git-ignored)."""\n'
    )
    paths = []
    for module, filename in SOURCES.items():
        text = (MARKET / filename).read_text()
        text = _IMPORT.sub(lambda m: f"from {NATIVE_PACKAGE}.{m.group(1)} import", text)
        if module == "book":
            stamp = (_mypyc_version(), source_hash(_mypyc_version()))
            text += f"\n\nBUILD_STAMP: Final = {stamp!r}\n"
        path = NATIVE / f"{module}.py"
        path.write_text(text)
        paths.append(str(path.relative_to(ROOT)))
    return paths


def _compile(paths: list[str]) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    with tempfile.TemporaryDirectory(prefix="tokex-mypyc-") as tmp:
        extensions = mypycify(
            paths, opt_level="3", group_name=f"{NATIVE_PACKAGE}.engine", target_dir=tmp
        )
        setup(
            name="tokex-native-book",
            ext_modules=extensions,
            script_args=["-q", "build_ext", "--inplace", "--build-temp", tmp],
        )


def build() -> None:
    clean()
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypy names the copies by their path from here
    try:
        paths = _write_copies()
        _compile(paths)
    finally:
        os.chdir(cwd)
        for module in SOURCES:  # only the extension modules stay
            (NATIVE / f"{module}.py").unlink(missing_ok=True)
        shutil.rmtree(ROOT / "build", ignore_errors=True)


def clean() -> None:
    shutil.rmtree(NATIVE, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--clean", action="store_true", help="remove the compiled book")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
        print(f"removed {NATIVE}")
        return 0
    build()
    # checked in a fresh interpreter: this one imported the build before (market.book_select)
    probe = "from market.book_select import compiled_book; print(compiled_book()[1])"
    check = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if check.stdout.strip() != "compiled":
        print(
            f"built, but not usable: {check.stdout.strip()} {check.stderr[-2000:]}", file=sys.stderr
        )
        return 1
    print(f"compiled book built in {NATIVE} (mypyc from mypy {_mypyc_version()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
