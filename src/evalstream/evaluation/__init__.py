"""Offline evaluation: statistics, calibration of the cascade, reports, readers of labelled data
and recorded judgements."""
