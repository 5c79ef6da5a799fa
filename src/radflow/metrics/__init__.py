"""Evaluation statistics as pure array functions: metrics per task, bootstrap intervals, operating points,
calibration and subgroups. No torch, no MLflow, no files.

A package of its own, below both :mod:`radflow.tasks` (each kind computes its test metrics here) and
:mod:`radflow.evaluate` (the report that predicts a split, draws figures and logs to MLflow), so the
kinds can use these functions without importing the report that looks the kinds up. Import the
modules (``from radflow.metrics import metrics``); this file imports nothing, so importing a kind
does not pull in scikit-learn.
"""
