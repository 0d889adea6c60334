"""A short pass of the explorer (tests/explore.py) inside the suite: twenty seeded scenarios of
real dialer processes against the simulator, every promise judged from the ledger and the
database. A failure names the scenario's seed, its violations and the command that replays it.
`python bench/explore.py --scenarios 500 --seed 1` is the long run."""

from __future__ import annotations

import pytest

from tests.explore import replay_command, run_one, scenario_seed

pytestmark = pytest.mark.slow  # real processes, signals and a shared fast clock

SEED = 10  # the suite's fixed session seed
SCENARIOS = 20


@pytest.mark.parametrize("i", range(SCENARIOS))
def test_explored_scenario_keeps_every_promise(tmp_path, i):
    seed = scenario_seed(SEED, i)
    violations = run_one(seed, tmp_path)
    assert not violations, "\n".join(
        [f"scenario seed {seed}: {len(violations)} violations", *violations,
         f"replay: {replay_command(seed)}"]
    )  # fmt: skip
