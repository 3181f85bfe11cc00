"""The paper's study (E1-E5) as bundle overlays run by a resumable runner, aggregated into paper-shaped tables.

``python -m mrivol_monai.experiments run E1 --profile quick`` trains and evaluates every variant x seed of E1
(``bundle/configs/experiments/``) in ``runs/E1/<variant>/seed<k>`` and writes ``runs/E1/results.{csv,md,png}``;
``report`` assembles all experiments into ``<out>/results.md`` (``--doc`` to write elsewhere; the committed copy
is ``bundle/docs/results.md``), with a verdict per paper finding (:mod:`.verdicts`) over the runs that count
(:mod:`.convergence`); ``grid --space FILE`` is the grid search.
"""

from mrivol_monai.experiments.aggregate import describe, load_results, write_tables
from mrivol_monai.experiments.convergence import RULE, run_status
from mrivol_monai.experiments.runner import RunFailed, RunSpec, plan, run_all, run_one
from mrivol_monai.experiments.variants import (EXPERIMENTS, PROFILES, Finding, Profile, Variant, get_experiment,
                                               get_profile)

__all__ = [
    "EXPERIMENTS", "PROFILES", "RULE", "Finding", "Profile", "RunFailed", "RunSpec", "Variant", "describe",
    "get_experiment", "get_profile", "load_results", "plan", "run_all", "run_one", "run_status", "write_tables",
]
