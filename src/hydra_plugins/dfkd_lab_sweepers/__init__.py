"""dfkd-lab's Hydra sweepers: ``hydra/sweeper=dfkd_bench`` (benchmarks) and
``hydra/sweeper=dfkd_optuna`` (hyperparameter search on current Optuna).

Hydra finds plugins only under the ``hydra_plugins`` namespace package; these modules stay light
(no torch import) because Hydra imports every plugin at the start of any app.
"""
