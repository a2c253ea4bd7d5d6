"""The served model, as MLflow "models from code": no pickled Python object in the artifact.

MLflow loads this file, which rebuilds the classifier from safetensors weights, the tokenizer and
the label map (the `classifier` artifact); `bitune/` ships with the model through `code_paths`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

BATCH = 64


class BituneTextClassifier(PythonModel):
    """Input: a `text` column (or a list of strings). Output: `label`, `score`, one `prob_<label>` each."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
        from bitune.model.classifier import load_classifier

        self.model, self.tokenizer, self.meta = load_classifier(Path(context.artifacts["classifier"]))
        self.model.eval()
        self.preprocess = self.meta.preprocess()

    # `pd.DataFrame`, a hint MLflow reads as "no schema from the hint" (the logged signature holds it):
    # without a hint MLflow warns at every load; a list of strings is accepted all the same
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        from bitune.data.preprocess import normalise_texts

        if isinstance(model_input, pd.DataFrame):
            texts = (
                model_input["text" if "text" in model_input else model_input.columns[0]].astype(str).tolist()
            )
        else:
            texts = [str(t) for t in model_input]
        # normalised as the training texts were (lowercase, strip, whitespace), from the saved meta
        texts = normalise_texts(pd.Series(texts, dtype=object), self.preprocess).tolist()
        probs = []
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                enc = self.tokenizer(
                    texts[i : i + BATCH],
                    truncation=True,
                    max_length=self.meta.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                probs.append(torch.softmax(self.model(enc["input_ids"], enc["attention_mask"]).float(), -1))
        p = torch.cat(probs) if probs else torch.empty(0, len(self.meta.labels))
        best = p.argmax(-1)
        out = pd.DataFrame(
            {"label": [self.meta.labels[i] for i in best.tolist()], "score": p.max(-1).values.tolist()}
        )
        for j, label in enumerate(self.meta.labels):
            out[f"prob_{label}"] = p[:, j].tolist()
        return out


mlflow.models.set_model(BituneTextClassifier())
