"""``hydra/sweeper=dfkd_optuna``: an Optuna (>= 4) study whose trials are Hydra jobs."""

import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.dfkd_lab_sweepers.optuna_sweeper.OptunaSweeper"
    study_name: str = "study"
    # sqlite:///path.db or journal:path.log: where the study lives, so a restart resumes it
    storage: str = "sqlite:///optuna.db"
    direction: str = "maximize"
    n_trials: int = 20  # trials this invocation adds to the study
    n_jobs: int = 1  # trials launched at once (the launcher runs them in parallel if it can)
    seed: Optional[int] = None  # the TPE sampler's seed
    n_startup_trials: int = 5  # random trials before TPE models the results
    # key -> interval(a, b) | tag(log, interval(a, b)) | choice(...) | range(a, b[, step])
    params: dict[str, str] = field(default_factory=dict)
    # an optuna.pruners class as a _target_ dict; null: no pruning
    pruner: Optional[dict[str, Any]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="dfkd_optuna", node=OptunaSweeperConf,
                             provider="dfkd_lab")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings):
        self.settings = settings

    def setup(self, *, hydra_context, task_function, config):
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments):
        from dfkd_lab.config import ConfigError
        from dfkd_lab.search import SearchFailed, run_study

        try:
            run_study(self.config.hydra.sweeper, self.config, self.launcher, list(arguments))
        except (ConfigError, SearchFailed) as err:  # one paragraph, as dfkd-train reports its own errors
            print(f"dfkd-train: {type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(2 if isinstance(err, ConfigError) else 1)
