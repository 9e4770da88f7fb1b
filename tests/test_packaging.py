"""The folders apps/, backbones/, datasets/ install inside the cnnapps namespace."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for top, namespace in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([namespace, *rel.parts]) if rel.parts else namespace)
    data_folders = set(config.get("package-data", {}))  # folders of files only (the page's assets)
    assert found | data_folders == listed


def test_subpackages_import_from_the_namespace() -> None:
    import cnnapps.apps
    import cnnapps.backbones
    import cnnapps.datasets

    assert Path(cnnapps.backbones.__file__).parent == ROOT / "backbones"
    assert Path(cnnapps.datasets.__file__).parent == ROOT / "datasets"
    assert Path(cnnapps.apps.__file__).parent == ROOT / "apps"
