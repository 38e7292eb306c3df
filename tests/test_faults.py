"""A pipeline step killed at a chosen point resumes on rerun: real local pipeline, real mlflow server on PostgreSQL
+ SeaweedFS, real training (``benchmarks/fault_driver.py`` drives it; the full table is ``make``-free:
``.venv/bin/python benchmarks/fault_driver.py``). Two kill points here keep it to a few minutes on 2 cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fault_driver  # noqa: E402

from sparse_core.preemption import FLUSH_SECONDS  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    b = fault_driver.Bench(tmp_path_factory.mktemp("faults"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def reference(bench):
    ref = fault_driver.reference_run(bench)
    assert ref["epochs_started"] == fault_driver.EPOCHS
    assert ref["versions"] == 1 and ref["alias"] == "1"
    return ref


def _resumed_cleanly(row: dict, max_extra: int) -> None:
    assert row["rerun_status"] == "SUCCEEDED", row
    assert row["killed_rc"] != 0, row  # the killed run failed, as a killed step must
    assert 0 <= row["extra_epochs"] <= max_extra, row
    assert row["masks_equal"], row
    assert row["child_runs_per_step"] and set(row["child_runs_per_step"].values()) == {1}, row
    assert row["versions"] == 1 and row["alias"] == "1", row
    assert row["same_parent"] and row["parent_runs"] == 1, row
    assert row["half_written_after_kill"] == [], row
    assert row["epoch_metric_steps"] == list(range(1, fault_driver.EPOCHS + 1)), row  # each epoch once, at its step


def test_sigterm_mid_epoch_stops_at_a_batch_and_resumes(bench, reference):
    row = fault_driver.scenario(bench, "mid_epoch", "TERM", reference)
    _resumed_cleanly(row, max_extra=1)
    assert row["checkpoint_kept"], row  # epoch 1's last.pt on the step's working folder
    # one 64 px batch + the MLflow flush + process teardown; the stated bound is a batch + FLUSH_SECONDS
    assert row["exit_seconds"] < FLUSH_SECONDS + 20, row


def test_sigkill_between_register_and_alias_leaves_one_version(bench, reference):
    row = fault_driver.scenario(bench, "register_before_alias", "KILL", reference)
    _resumed_cleanly(row, max_extra=0)
