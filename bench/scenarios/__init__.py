"""One module per bench scenario. Each exposes run(h: harness.Harness) -> None, which
runs its clients through h.run_series and adds tables and targets to h.report; run.py
registers every scenario explicitly by name."""
