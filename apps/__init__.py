"""Task applications, one sub-package each, all built on :mod:`cnnapps.backbones`."""
