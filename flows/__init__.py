"""Prefect flows and the `bitune` command line: read params, call tasks in order, nothing else."""
