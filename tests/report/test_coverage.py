"""Coverage of the reported intervals, measured on simulated studies fitted to the recorded runs (issue 24).

The study reports an interval only where its 95% coverage of its own estimand was measured within 93-97%; these
tests rerun that measurement (the same seeded simulation as `run.py`), check that the committed results.json holds
exactly these numbers (the README quotes them from there), and that the fitting recovers a model it is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ilora.report import records as analysis
from ilora.report import simulation
from ilora.report.statistics import INTERVALS, REPORTED

REPO = Path(__file__).resolve().parents[2]
STUDIES = [REPO / "experiments" / "study", REPO / "experiments" / "study" / "powered"]
BAND = (0.93, 0.97)


def _study(results: Path) -> tuple[list[dict], dict]:
    committed = json.loads((results / "results.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    return [r for r in records if r["method"] != "sasrec"], committed


def test_the_fit_recovers_the_model_it_was_given():
    """Averaged over three simulated studies (one study's users are a finite sample: p alone moves by ~0.03)."""
    truth = simulation.StudyModel(p=(0.30, 0.22), user=0.35, example=0.15, method=0.15, run=0.03,
                                  windows=tuple([1, 2, 3, 4] * 100))
    fits = [simulation.fit(*simulation.simulate(truth, 12, np.random.default_rng(seed))[:3]) for seed in range(3)]
    mean = {k: np.mean([getattr(f, k) for f in fits], axis=0) for k in ("p", "user", "example", "method", "run")}
    assert mean["p"] == pytest.approx(truth.p, abs=0.04)
    assert mean["user"] + mean["example"] == pytest.approx(truth.user + truth.example, abs=0.05)  # methods share it
    assert mean["method"] == pytest.approx(truth.method, abs=0.03)  # shared by the seeds of one method only
    assert mean["user"] == pytest.approx(truth.user, abs=0.08)  # shared by the windows of one user
    assert mean["run"] == pytest.approx(truth.run, abs=0.015)  # moves a whole run
    assert all(f.windows == truth.windows for f in fits)


def test_the_estimands_are_what_the_intervals_are_read_against():
    """With no training noise the three estimands meet; the users interval's 'runs' truth is the runs' own mean."""
    model = simulation.StudyModel(p=(0.4, 0.4), user=0.5, example=0.0, method=0.0, run=0.2, windows=(1,) * 50)
    truths = [simulation.simulate(model, 3, np.random.default_rng(s))[3] for s in range(200)]
    assert all(t["population"] == 0.0 for t in truths)
    runs = np.asarray([t["runs"] for t in truths])
    assert runs.std() > 0.02 and abs(runs.mean()) < 4 * runs.std() / np.sqrt(runs.size)  # a run shift moves these runs' difference, not the mean


@pytest.mark.parametrize("results", [s for s in STUDIES if (s / "results.json").is_file()], ids=lambda p: p.name)
def test_reported_intervals_cover_within_93_97_and_results_json_holds_the_measurement(results):
    runs, committed = _study(results)
    seeds = {}
    for r in runs:
        seeds.setdefault((r["dataset"], r["protocol"], r["method"]), set()).add(r["seed"])
    # every panel where both methods have two seeds is measured (none yet while a study is under way)
    paired = {(d, p) for (d, p, m), s in seeds.items() if m == "lora_k1" and len(s) >= 2
              and len(seeds.get((d, p, "ilora_k4"), ())) >= 2}
    assert {(c["dataset"], c["protocol"]) for c in committed["coverage"]} == paired
    if results == STUDIES[0]:
        assert paired  # the first study is complete: its coverage is measured
    measured = analysis.coverage(runs, [(c["dataset"], c["protocol"]) for c in committed["coverage"]],
                                 ("ilora_k4", "lora_k1"))
    assert json.loads(json.dumps(measured)) == committed["coverage"]  # the README quotes results.json
    for panel in measured:
        for seeds, found in panel["coverage"].items():
            for name, got in found.items():
                if name in REPORTED and int(seeds) >= REPORTED[name]:
                    assert BAND[0] <= got["coverage"] <= BAND[1], (panel["dataset"], panel["protocol"], seeds, name)


def test_every_dropped_interval_fell_outside_the_band_in_the_first_studys_panels():
    """The choice of intervals is one for the framework, made on the first (complete) study's fits: each dropped
    interval was outside 93-97% in one of its panels. A panel of a later study where a dropped one happens to cover
    does not bring it back (the reported interval for its estimand stays). The measurements are the committed ones,
    which the test above checks against a fresh simulation."""
    measured = _study(STUDIES[0])[1]["coverage"]
    assert measured
    for name in set(INTERVALS) - set(REPORTED):
        seen = [p["coverage"][s][name]["coverage"] for p in measured for s in p["coverage"] if name in p["coverage"][s]]
        assert seen and any(not BAND[0] <= c <= BAND[1] for c in seen), name
