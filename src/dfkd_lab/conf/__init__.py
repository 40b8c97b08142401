"""dfkd-train's Hydra configs: a package so Hydra reads them as ``pkg://dfkd_lab.conf``."""
