"""Thin Prefect tasks: one module per stage, each wrapping plain functions that hold the logic.

Tasks pass references (paths, DVC md5s, MLflow run ids, `models:/` URIs), never DataFrames or models.
"""
