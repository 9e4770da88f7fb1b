"""Settings of ``cnnapps train classify`` (plain data: the command line is built from them)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnapps.apps.common.config import TrainConfig


@dataclass
class ClassifyConfig(TrainConfig):
    """Fine-tune a backbone with a linear head on a class-per-folder tree or a path,label CSV."""
