"""Hyperparameter search on validation with Hydra's Optuna sweeper, resumable from its study file.

`conf/hparams_search/*.yaml` select `ResumableOptunaSweeper` (here, in the `hydra_plugins` namespace, because Hydra
loads sweepers only from there): Hydra's own Optuna sweeper (hydra-optuna-sweeper,
which pins optuna<3; optuna 2.10 needs SQLAlchemy<2, see the `sweeps` extra) with three additions that a search on a
laptop or a cluster needs:

* the study lives in a file in the sweep directory (`optuna.db`), created before the first trial;
* `n_trials` is the search's total: launched again over the same sweep directory, an interrupted search runs only
  the trials it still owes (a trial cut off while running is marked failed), and numbers the new trials' run
  directories after the old ones instead of over them;
* the best trial is printed with its run directory, whose `config.yaml` is the full configuration it ran, and
  written to `best_trial.yaml` beside the study.

The objective is the run's return value: `ilora-train` returns `optimized_metric`, which must be a validation
metric (`val/...`); the search configs also switch the test split off (`test: false`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

# Hydra's logging shows INFO from every library, and optuna's study file brings alembic, which announces its own
# set-up (plugins, schema migrations) at import: not news to someone running a search
logging.getLogger("alembic").setLevel(logging.WARNING)

try:  # the `sweeps` extra; Hydra imports every plugin module at start-up, so its absence must not break a run
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - exercised only without the extra
    OptunaSweeper = object

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        sweep_dir = Path(str(impl.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = str(impl.storage or "")
        done = 0
        if storage.startswith("sqlite:///") and Path(storage.removeprefix("sqlite:///")).is_file():
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=storage)
            except KeyError:  # the file holds no study of this name yet
                study = None
            if study is not None:
                for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # cut off by the interruption
                finished = study.get_trials(deepcopy=False)
                done = len(finished)
                impl.job_idx = max(impl.job_idx, done)  # new run directories after the old ones
                log.info(f"Continuing study {impl.study_name}: {done} trials recorded, "
                         f"{max(impl.n_trials - done, 0)} to go")
        impl.n_trials = max(impl.n_trials - done, 0)
        if impl.n_trials > 0:
            impl.sweep(arguments)
        report_best(sweep_dir, storage, impl.study_name)


def report_best(sweep_dir: Path, storage: str, study_name: str) -> dict[str, Any] | None:
    """Print and write (`best_trial.yaml`) the best finished trial with its run directory and configuration."""
    import optuna
    import yaml

    from ilora.cli.common import write_text_atomic

    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print(f"[ilora] search {study_name}: no trial finished yet", flush=True)
        return None
    best = study.best_trial
    run_dir = sweep_dir / str(best.number)  # hydra.sweep.subdir is the job number, which follows the trial number
    best_info = {"study": study_name, "storage": storage, "trial": best.number, "value": best.value,
                 "params": best.params, "run_dir": str(run_dir), "trials_complete": len(complete),
                 "trials_total": len(study.trials)}
    write_text_atomic(sweep_dir / "best_trial.yaml", yaml.safe_dump(best_info, sort_keys=False))
    config = run_dir / "config.yaml"
    print(f"[ilora] best trial #{best.number} of {len(study.trials)}: objective {best.value:.4f}", flush=True)
    print(f"[ilora]   params: {best.params}", flush=True)
    if config.is_file():
        print(f"[ilora]   its configuration: {config}", flush=True)
        print(config.read_text(), flush=True)
    return best_info
