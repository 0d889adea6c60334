"""A short pass of the explorer (tests/explore.py) inside the suite: seeded scenarios of real
dialer processes against the simulator, every promise judged from the ledger and the database.
A failure names the scenario's seed, its violations and the command that replays it.
`python bench/explore.py --scenarios 500 --seed 1 --jobs 2` is the long run.

The regression seeds are scenarios that broke a promise before issue 10's fixes (what each found
is beside it). A seed replays its plan exactly, the interleaving of real processes only roughly,
so a seed is a scenario that can break the promise, not one that must; together with the fresh
scenarios they cover every path of the issue.
"""

from __future__ import annotations

import pytest

from tests.explore import replay_command, run_one, scenario_seed

pytestmark = pytest.mark.slow  # real processes, signals and a shared fast clock

SEED = 10  # the suite's fixed session seed
SCENARIOS = 10
REGRESSIONS = {
    777936818: "two starts of one source at once both dialled (item 1)",
    831: "`stop` while the driver was SIGSTOPped past its heartbeat: it looped forever (item 2)",
    244195146: "a retry after a mid-run resume was claimed after its window closed (item 3)",
    529: "SIGTERM while a create was held: 3 more numbers dialled (item 4)",
    794: "a needs_review lead with two live calls counted one slot: 6 live at N=5 (item 5)",
    508466295: "runs with N=2 and N=4 on one account: 4 live (item 6)",
    396: "resume --db relative took over from start --db symlink (item 7)",
    352512859: "Twilio 90 s behind: a lost create was not matched and redialled (item 8)",
    55913895: "`stop` while Twilio was unreachable: the driver did not end (item 9)",
    434482138: "cleanup-stuck exited 0 while Twilio was unreachable (item 9)",
    308440041: "a driver stalled past 60 s dropped out of the smallest N: 4 live at N=2",
}


def check(seed: int, tmp_path) -> None:
    violations = run_one(seed, tmp_path)
    assert not violations, "\n".join(
        [f"scenario seed {seed}: {len(violations)} violations", *violations,
         f"replay: {replay_command(seed)}"]
    )  # fmt: skip


@pytest.mark.parametrize("i", range(SCENARIOS))
def test_explored_scenario_keeps_every_promise(tmp_path, i):
    check(scenario_seed(SEED, i), tmp_path)


@pytest.mark.parametrize("seed", REGRESSIONS, ids=[str(s) for s in REGRESSIONS])
def test_regression_scenario_keeps_every_promise(tmp_path, seed):
    check(seed, tmp_path)
