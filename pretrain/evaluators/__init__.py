"""Evaluators: exact classification accuracy (top-1/top-5/loss/ReaL) and few-shot linear probes, run by a stage."""
