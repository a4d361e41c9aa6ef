"""The ETAs the trainer prints (this epoch's pace) and writes to progress.json (the run's average pace)."""

from mlconnect.engine.progress import eta_s, eta_total_s


def test_eta_from_this_epochs_pace() -> None:
    assert eta_s(10.0, 0, 100, 3) is None  # no step yet: no pace
    # 10 s for 20 steps: 80 steps left in this epoch + 3 epochs of 100 -> 380 steps at 0.5 s
    assert eta_s(10.0, 20, 100, 3) == 190.0


def test_eta_total_from_the_average_pace() -> None:
    assert eta_total_s(0.0, 0, 1000) is None
    assert eta_total_s(50.0, 250, 1000) == 150.0
