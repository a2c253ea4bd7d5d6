"""bitune: bidirectional fine-tuning of pretrained transformers for text classification.

The core package: pure Python + torch/transformers/pandas. It never imports prefect, mlflow or dvc,
so every piece of logic here tests in milliseconds; `tasks/` wraps it for the pipeline.
"""

__version__ = "0.1.0"
