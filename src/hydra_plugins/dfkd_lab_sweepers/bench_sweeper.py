"""``hydra/sweeper=dfkd_bench``: the cells of a ``dfkd-bench`` benchmark, through any launcher."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


@dataclass
class BenchSweeperConf:
    _target_: str = "hydra_plugins.dfkd_lab_sweepers.bench_sweeper.BenchSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="dfkd_bench", node=BenchSweeperConf,
                             provider="dfkd_lab")


class BenchSweeper(Sweeper):
    """Lists the benchmark's cells from its config (``dfkd_lab.bench.sweep``), skips finished ones
    and launches the rest with the configured launcher; exits 1 when a cell failed."""

    def setup(self, *, hydra_context, task_function, config):
        self.config = config
        self.config_loader = hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments):
        from dfkd_lab.bench import sweep

        if sweep(self.config, self.config_loader, self.launcher, list(arguments)):
            raise SystemExit(1)
