"""The run spec: what the laptop sends the host agent for ``train --host`` and ``resume``.

Round trips exactly, and every malformed spec (the host validates what arrives) is one line naming
the field, through the real agent too (``python -m mlconnect.runs.agent start --spec -``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlconnect.engine.runspec import RunSpec, SpecError

FULL = RunSpec(experiment="exp_1", config="configs/a.yaml", model="SASRec", dataset="ml-100k",
               data_path="/data", overrides=("epochs=2", "hidden_size=16"), resume=False, force=True,
               queue=True, nproc=2, gpus="0,1", env={"MLCONNECT_DATA_PATH": "/data"})


@pytest.mark.parametrize("spec", [RunSpec(experiment="e"), FULL])
def test_round_trip(spec: RunSpec) -> None:
    text = spec.to_json()
    assert RunSpec.from_json(text) == spec
    assert RunSpec.from_json(text.encode()) == spec
    assert json.loads(text)["version"] == 1


def _doc(**changes: object) -> str:
    return json.dumps({**json.loads(FULL.to_json()), **changes})


@pytest.mark.parametrize(("text", "words"), [
    ("not json", "run spec is not JSON"),
    ("[1, 2]", "run spec is a JSON list, not an object"),
    ('{"config": "a.yaml"}', "run spec has no experiment"),
    (_doc(experiment="../victim"), "invalid experiment name '../victim'"),
    (_doc(experiment="."), "invalid experiment name '.'"),
    (_doc(epochs=3), "unknown field(s): epochs"),
    (_doc(version=2), "run spec version 2 is not 1"),
    (_doc(overrides=["epochs"]), "overrides is not a list of KEY=VALUE strings"),
    (_doc(overrides="epochs=2"), "overrides is not a list of KEY=VALUE strings"),
    (_doc(nproc=0), "nproc is not a whole number of at least 1"),
    (_doc(nproc=True), "nproc is not a whole number of at least 1"),
    (_doc(gpus="0;1"), "gpus is not a comma-separated list"),
    (_doc(resume="yes"), "resume is not true or false"),
    (_doc(config=""), "config is not a non-empty string"),
    (_doc(env={"PATH": "/tmp"}), "env is not a map of MLCONNECT_NAME"),
])
def test_a_bad_spec_is_one_line_naming_the_field(text: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        RunSpec.from_json(text)
    line = str(err.value)
    assert words in line and "\n" not in line and " — " in line  # what failed — what to do


def test_the_agent_refuses_a_bad_spec_with_one_line_and_starts_nothing(tmp_path) -> None:
    cp = subprocess.run([sys.executable, "-m", "mlconnect.runs.agent", "start", "--json", "--spec", "-"],
                        input=_doc(experiment="..", force=True), capture_output=True, text=True, cwd=tmp_path,
                        timeout=60)
    assert cp.returncode == 3, cp.stderr
    assert json.loads(cp.stdout)["type"] == "SpecError"
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith("error: run spec: experiment: invalid")
    assert list(tmp_path.iterdir()) == []
