"""The paper's study (E1-E5) as bundle overlays run by a resumable runner, aggregated into paper-shaped tables.

``python -m mrivol_monai.experiments run E1 --profile quick`` trains and evaluates every variant x seed of E1
(``bundle/configs/experiments/``) in ``runs/E1/<variant>/seed<k>`` and writes ``runs/E1/results.{csv,md,png}``;
``report`` assembles all experiments into ``bundle/docs/results.md``; ``grid --space FILE`` is the grid search.
"""

from mrivol_monai.experiments.aggregate import describe, load_results, write_tables
from mrivol_monai.experiments.runner import RunFailed, RunSpec, plan, run_all, run_one
from mrivol_monai.experiments.variants import EXPERIMENTS, PROFILES, Profile, Variant, get_experiment, get_profile

__all__ = [
    "EXPERIMENTS", "PROFILES", "Profile", "RunFailed", "RunSpec", "Variant", "describe",
    "get_experiment", "get_profile", "load_results", "plan", "run_all", "run_one", "write_tables",
]
