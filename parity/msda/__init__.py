"""MSDA's parity problems: what parity/operators.py hands the shared runner for `--op msda`."""
