"""The package as an operator installs it: a wheel that serves without the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.service_process import ROOT


def test_a_wheel_carries_the_grammar_and_the_catalog_and_loads_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("leafresh_recommender-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "service/recommend/grammars/challenge.gbnf",
        "service/recommend/grammars/challenge.schema.json",
        "service/tools/models/catalog.toml",
        "service/api/page/index.html",
    ):
        assert data in names, data
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    )
    for command in ("leafresh-serve", "leafresh-fetch-model", "leafresh-standin", "leafresh-quantize"):
        assert command in entry_points

    # Unpacked somewhere else and imported from there, away from the source tree.
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = (
        "import service.recommend.answer as a, service.tools.modelhub as m;"
        "assert a.max_tokens() > 1 and a.load_schema();"
        "assert m.load_catalog();"
        "print(a.GRAMMAR_DIR.resolve(), m.CATALOG_PATH.resolve())"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(installed)!r}); {probe}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout, result.stdout
