"""bitune: bidirectional fine-tuning of pretrained transformers for text classification.

The core package: pure Python + torch/transformers/pandas. It never imports prefect, mlflow or dvc,
so every piece of logic here tests in milliseconds; `tasks/` wraps it for the pipeline.
"""

import logging

__version__ = "0.1.0"

# bitune's status lines (a run skipped and why, a phase resuming) are INFO. A Prefect worker's flow
# process leaves an unset logger at the root's WARNING, which dropped them from the flow run's log;
# a level set by the user wins.
if logging.getLogger(__name__).level == logging.NOTSET:
    logging.getLogger(__name__).setLevel(logging.INFO)
