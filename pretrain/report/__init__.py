"""A self-contained HTML report of one or several runs (`launch/report.py`): curves, final table, weight pictures."""
