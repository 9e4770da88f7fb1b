"""A run's config.yaml says how its settings are read back: a more-data run written before a freeze not given was
saved as null resumes with the preset's freeze, as it trained."""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import SETTINGS_FORMAT, load_config, write_config


def _run(out: Path, **settings: object) -> None:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"task": "classify", "data": "d", "backbone": "lenet5",
                                                     "preset": "more-data", **settings}))  # fmt: skip


def test_an_older_more_data_run_resumes_with_the_presets_freeze(tmp_path: Path) -> None:
    _run(tmp_path / "old", freeze=0)  # what an older version saved when no freeze was given
    resumed = load_config(None, ClassifyConfig, out=str(tmp_path / "old"), resume=True)
    assert resumed.freeze is None  # the preset decides, as when it trained (it was read as "nothing frozen")
    _run(tmp_path / "new", freeze=0, **{SETTINGS_FORMAT: 2})  # --freeze 0 given beside the preset
    assert load_config(None, ClassifyConfig, out=str(tmp_path / "new"), resume=True).freeze == 0


def test_a_written_config_names_its_format_and_reads_back(tmp_path: Path) -> None:
    config = load_config(None, ClassifyConfig, data="d", out=str(tmp_path / "run"), preset="more-data")
    write_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved[SETTINGS_FORMAT] == 2 and saved["freeze"] is None
    assert load_config(tmp_path / "config.yaml", ClassifyConfig).freeze is None
