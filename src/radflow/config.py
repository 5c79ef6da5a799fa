"""params.yaml as pydantic models: the one source of truth for data, split, training, evaluation, gates,
export and serving settings.

Every field has a description (listed by ``radflow params`` with :func:`describe_params`, and written
as comments into the params.yaml ``radflow init`` makes, by :func:`params_yaml`), unknown or misspelt
keys are errors that name the key and suggest the close one (by spelling, and by meaning for the names
other tools use: ``learning_rate`` -> ``lr``), and CLI flags override file values through
:meth:`Params.with_overrides` with dotted keys (``train.epochs``).
"""

from __future__ import annotations

import textwrap
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radflow.data.decoded import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from radflow.errors import ConfigError, NotFoundError, did_you_mean

__all__ = [
    "DEFAULT_CONTENT_TYPES",
    "NOT_STATED",
    "SOURCES",
    "AugmentConfig",
    "DataConfig",
    "EvaluateConfig",
    "ExportConfig",
    "GateConfig",
    "KafkaConfig",
    "ModelCardConfig",
    "Params",
    "RegistryConfig",
    "ServeConfig",
    "SplitConfig",
    "SynthConfig",
    "TrainConfig",
    "WorkflowConfig",
    "WorkflowStepConfig",
    "describe_params",
    "flatten_params",
    "load_params",
    "params_yaml",
    "validate_params",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SOURCES = ("synthetic", "chexpert", "nih", "boneage", "folder", "dicom", "siim", "masks")
"""Where a workspace's raw data comes from (``radflow init --source``); synthetic is phantom CheXpert."""


class _Section(_Strict):
    """A section that older params.yaml files held as a free-form mapping.

    It still compares equal to the mapping of the keys a file set, so code written against the
    dict (``params.data == {"source": "synthetic"}``) keeps working.
    """

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self.model_dump(exclude_unset=True) == other
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


class SynthConfig(_Strict):
    """Phantom images written by the ``synth`` stage of a synthetic workspace (chest radiographs by default)."""

    kind: Literal["chest", "spine", "hand"] = Field(
        default="chest",
        description="chest: frontal radiographs in CheXpert's layout; spine: sagittal lumbar MR (DICOM) with each "
        "vertebra's COCO box, level and Schmorl's node (ingested as coco-boxes; `radflow init --workflow spine`); "
        "hand: hand radiographs in RSNA bone age's layout (ingested as boneage, or with masks as the hand's "
        "segmentation; `radflow init --workflow bone-age`).",
    )
    n: int = Field(default=2000, ge=10, description="Number of phantom images.")
    seed: int = Field(default=0, description="Seed: the same seed writes the same bytes.")
    size: int = Field(default=256, ge=16, description="Phantom image width in pixels (height is 1.2x).")
    dicom_fraction: float = Field(default=0.0, ge=0, le=1, description="Share of images written as DICOM.")
    masks: bool = Field(
        default=False,
        description="Also write the exact ground-truth masks (lungs, heart, findings); the workspace then ingests "
        "them as a segmentation dataset (`radflow init --task segmentation` sets it).",
    )
    boxes: bool = Field(
        default=False,
        description="Also write the findings' exact boxes as COCO annotations.json; the workspace then ingests "
        "them as a detection dataset (`radflow init --task detection` sets it).",
    )

    @model_validator(mode="after")
    def _one_truth(self) -> SynthConfig:
        if self.masks and self.boxes:
            raise ValueError("a workspace trains one task: set masks (segmentation) or boxes (detection), not both")
        if self.kind == "spine" and (self.masks or self.boxes or self.dicom_fraction):
            raise ValueError("spine phantoms are DICOM with their boxes always: drop masks, boxes, dicom_fraction")
        if self.kind == "hand" and (self.boxes or self.dicom_fraction):
            raise ValueError("hand phantoms are PNGs with their bone age (and masks): drop boxes, dicom_fraction")
        return self


class CropsConfig(_Strict):
    """A crop classification dataset cut from another step's detection dataset (``data.source: crops``)."""

    dataset: str = Field(
        default="../vertebra/data/split",
        description="The detection dataset (workspace-relative) whose images are cut; each crop keeps its image's "
        "patient and split, so held-out images give held-out crops.",
    )
    table: str = Field(
        default="../vertebra/data/raw/spine-phantom/annotations.json",
        description="The box table with the per-box label: a COCO annotations.json or a CSV (path, x, y, width, "
        "height, attributes), workspace-relative.",
    )
    label: str = Field(
        default="schmorl", min_length=1, description="The per-box attribute that labels a crop (0/1, or see task)."
    )
    keep: list[str] = Field(default_factory=lambda: ["level"], description="Per-box attributes kept per crop.")
    margin: float = Field(default=0.1, ge=0, le=1, description="Fraction of the box's side added around it.")
    box_label: str | None = Field(default=None, description="Only boxes of this category (default: all).")
    masks: str | None = Field(
        default=None,
        description="A mask source (--format masks layout, workspace-relative): table is then a per-image CSV (path "
        "or RSNA's id) and each image's box its structure's mask extent, cut as a crop by mask step cuts it.",
    )
    structure: str | None = Field(default=None, description="masks: the structure to crop by (default: the only one).")
    task: Literal["multilabel", "regression"] = Field(
        default="multilabel", description="multilabel: 0/1 labels (a classifier); regression: numbers (bone age)."
    )
    sex_field: str | None = Field(
        default=None, description="masks: the per-image field giving each crop's sex (RSNA's male)."
    )


class DataConfig(_Section):
    """Where the raw data comes from and how it is ingested into a dataset."""

    source: Literal["synthetic", "chexpert", "nih", "boneage", "folder", "dicom", "siim", "masks", "crops"] = Field(
        default="synthetic",
        description="Raw data source; synthetic writes phantom images; crops cuts another step's boxes (data.crops).",
    )
    raw: str = Field(default="data/raw", description="Raw data folder in the workspace (tracked by DVC).")
    size: int = Field(default=256, ge=16, description="Side of the square training image, in pixels.")
    uncertain: str = Field(
        default="zeros",
        description="CheXpert uncertain (-1) policy: zeros|ones|ignore, or per label: 'zeros,Edema=ones'.",
    )
    labels: list[str] | None = Field(default=None, description="Label columns to keep (default: all).")
    frontal_only: bool = Field(default=False, description="Keep frontal views only.")
    labels_csv: str | None = Field(default=None, description="DICOM: labels CSV keyed by SOPInstanceUID or path.")
    synth: SynthConfig = Field(default_factory=lambda: SynthConfig(), description="Phantom data (source synthetic).")
    crops: CropsConfig = Field(
        default_factory=lambda: CropsConfig(), description="The crop dataset's source boxes (source crops)."
    )
    extra: list[str] = Field(
        default_factory=list,
        description="Extra training-only folders in the workspace, in the source's layout (e.g. data/feedback from "
        "`radflow feedback export`); their images join train, never val or test.",
    )

    @property
    def format(self) -> str:
        """The ingest format of the source (phantom data is written in CheXpert's layout, masks or boxes beside it)."""
        if self.source == "synthetic":
            if self.synth.kind == "spine":
                return "coco-boxes"
            if self.synth.kind == "hand":
                return "masks" if self.synth.masks else "boneage"
            return "masks" if self.synth.masks else "coco-boxes" if self.synth.boxes else "chexpert"
        return self.source


class SplitConfig(_Section):
    """Patient-level train/val/test split."""

    val: float = Field(default=0.1, ge=0, lt=1, description="Fraction of images for validation.")
    test: float = Field(default=0.15, ge=0, lt=1, description="Fraction of images for the test set.")
    seed: int = Field(default=0, description="Seed; the same seed gives the same split.")


class ExportConfig(_Strict):
    """ONNX export of the trained model."""

    opset: int = Field(default=17, ge=17, description="ONNX opset.")
    int8: bool = Field(default=False, description="Also write a checked INT8 model.")
    max_int8_dice_drop: float = Field(
        default=0.01,
        ge=0,
        description="Largest mean Dice drop on the val split an INT8 segmentation model may show and still be kept.",
    )
    max_int8_map_drop: float = Field(
        default=0.02,
        ge=0,
        description="Largest mAP50 drop on the val split an INT8 detection model may show and still be kept.",
    )
    triton: bool = Field(default=False, description="Also write a Triton model repository (models/triton).")


class RegistryConfig(_Strict):
    """Where the register stage puts the model."""

    name: str = Field(default="chest-xray", min_length=1, description="Registered model name.")


DEFAULT_CONTENT_TYPES = ["image/png", "image/jpeg", "application/dicom"]
_FORMAT_OF = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "application/dicom": "dicom"}


class ServeConfig(_Strict):
    """How ``radflow serve --workspace`` serves the champion: the ``serve:`` section of params.yaml.

    :class:`radflow.inference.ServeSettings` adds what belongs to one serving process rather than to
    the workspace (its folder, the admin token, store and tracking URLs) and reads ``RADFLOW_<FIELD>``
    environment variables over these.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port to listen on."""
    model: str | None = None
    """Champion model: ONNX path, run id, runs:/ID or models:/NAME@ALIAS (default models:/MODEL_NAME@champion)."""
    challenger: str | None = None
    """Optional challenger model URI for A/B, canary or shadow routing."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Most images run together in one ONNX Runtime call."""
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    """0: adaptive batching — a batch runs as soon as ONNX Runtime is free, with the requests that queued while
    it was busy (a lone request waits for nothing); above 0: a fixed window, the longest a request waits for
    others to fill its batch."""
    max_queue_size: int = Field(default=256, ge=1)
    """Requests waiting for the model beyond this are refused with 503 and Retry-After."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """A request not answered within this many seconds gets 504."""
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above)."""
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest image (width x height) decoded; larger uploads get 422 before decompression."""
    max_aspect_ratio: float | None = Field(default=DEFAULT_MAX_ASPECT_RATIO, ge=1)
    """Longest over shortest side accepted (422 beyond, from the header, before decoding); null: no limit."""
    max_in_flight: int = Field(default=64, ge=1)
    """Requests worked on at once (body, decode, queue, inference); more are refused at the door with 503."""
    allowed_content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    """Image types /v1/predict accepts, checked against the sniffed bytes (not the declared header)."""
    store_inputs: bool = True
    """Keep decoded input pixels (PNG, content-addressed by sha256, beside the db) for heatmaps and relabelling."""
    challenger_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of traffic the challenger answers (canary); 0 = champion only."""
    shadow: bool = False
    """Challenger scores every request in the background; only the champion answers."""
    decode_workers: int = Field(default=2, ge=1)
    """Threads that decode and preprocess uploads off the event loop."""
    exclusive_inference: bool = True
    """ORT batches never run beside a decode (decodes pause): on few cores this keeps ORT's threads at full speed."""
    threads: int | None = None
    """ONNX Runtime intra-op threads per model (default: the available cores)."""
    int8: bool = False
    """Serve the INT8 export of registry models."""
    drift: bool = True
    """Keep a window of live inputs/outputs per model version and score it against the model's reference.json."""
    drift_window: int = Field(default=500, ge=10)
    """Most recent predictions per model version that drift is scored on (a ring buffer)."""
    drift_min_window: int = Field(default=100, ge=10)
    """Predictions needed before drift is scored (PSI of a small window is biased upward)."""
    drift_psi_threshold: float = Field(default=0.2, gt=0)
    """PSI at or above this is drift (0.1-0.2 moderate, above 0.2 major)."""
    drift_ks_threshold: float = Field(default=0.2, gt=0, le=1)
    """Kolmogorov-Smirnov statistic (largest gap between CDFs) at or above this is drift."""
    drift_embedding_threshold: float = Field(default=0.5, gt=0)
    """Embedding mean shift, in reference standard deviations (RMS over dimensions), at or above this is drift."""
    drift_interval_s: float = Field(default=15.0, gt=0)
    """How often drift is scored in the background (gauges, alerts); GET /v1/monitoring also scores it."""
    auto_rule: bool = False
    """Let online evaluation promote or roll back the challenger when the evidence is significant (off by default)."""
    auto_rule_interval_s: float = Field(default=300.0, gt=0)
    """How often the auto rule looks at the online report."""
    auto_rule_min_feedback: int = Field(default=200, ge=1)
    """Feedback-labelled predictions per arm needed before the auto rule may act."""
    auto_rule_metric: str | None = None
    """Metric the auto rule compares (e.g. macro_auroc, mae); default: macro AUROC or MAE by task."""
    auto_rule_margin: float = Field(default=0.0, ge=0)
    """How far the CI of the challenger's gain must clear zero before the auto rule acts."""
    online_window: int = Field(default=1000, ge=10)
    """Most recent feedback-labelled predictions per arm that online evaluation uses."""
    auth: Literal["off", "tokens", "oidc"] = "tokens"
    """Who may call the server: ``tokens`` (radflow API tokens with roles, ``radflow token create``), ``oidc``
    (those and JWT bearer tokens of the OIDC issuer below), ``off`` (anyone who reaches the port: the local demo)."""
    public_metrics: bool = False
    """Leave ``/metrics`` open (a Prometheus scraping inside a trusted network); else it needs the operator role."""
    oidc_issuer: str | None = None
    """OIDC issuer whose access tokens are accepted (``auth: oidc``); the ``iss`` claim must equal it."""
    oidc_audience: str | None = None
    """Audience the tokens must be issued for (the ``aud`` claim); required with ``auth: oidc``."""
    oidc_jwks: str | None = None
    """The issuer's signing keys (JWKS): a file path or its ``jwks_uri`` (https URL, fetched and cached)."""
    oidc_roles_claim: str = "roles"
    """Claim listing the caller's roles or groups; dots reach into objects (``realm_access.roles``)."""
    oidc_role_map: dict[str, Literal["client", "reader", "operator"]] = Field(default_factory=dict)
    """Claim value -> radflow role (e.g. ``radiologists: reader``); a value that is a role name maps to itself."""
    oidc_name_claim: str = "preferred_username"
    """Claim naming the caller in the audit log (``sub`` when the token lacks it)."""
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    """Signature algorithms accepted (asymmetric only: the server holds no issuer secret)."""
    oidc_leeway_s: float = Field(default=30.0, ge=0, le=300)
    """Clock skew tolerated when checking ``exp`` and ``nbf``."""

    @field_validator("allowed_content_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in _FORMAT_OF]
        if unknown:
            raise ValueError(f"unknown content types {unknown}; choose from {sorted(_FORMAT_OF)}.")
        return value

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> ServeConfig:
        if self.drift_min_window > self.drift_window:
            raise ValueError(
                f"drift_min_window ({self.drift_min_window}) is larger than drift_window ({self.drift_window}); "
                "drift would never be scored."
            )
        return self

    @property
    def allowed_formats(self) -> set[str]:
        """Sniffed formats ("png", "jpeg", "dicom") the allowed content types stand for."""
        return {_FORMAT_OF[t] for t in self.allowed_content_types}


class AugmentConfig(_Strict):
    """Random training-time transforms, applied on tensors after preprocessing."""

    rotation_deg: float = Field(default=5.0, ge=0, le=45, description="Maximum rotation, in degrees, either way.")
    scale: float = Field(default=0.05, ge=0, lt=0.5, description="Maximum relative zoom in or out.")
    brightness: float = Field(
        default=0.1, ge=0, le=1, description="Maximum additive brightness shift (normalised units)."
    )
    contrast: float = Field(default=0.1, ge=0, lt=1, description="Maximum relative contrast change.")
    hflip: bool = Field(
        default=False, description="Random horizontal flip; off by default for chest films because laterality matters."
    )
    enabled: bool = Field(default=True, description="Switch all augmentation off at once.")


class TrainConfig(_Strict):
    """Everything that decides how a model is trained."""

    arch: str = Field(default="small_cnn", description="Architecture name from radflow.train.models.list_models().")
    epochs: int = Field(default=8, ge=1, description="Maximum number of passes over the training split.")
    batch_size: int = Field(default=32, ge=1, description="Images per optimisation step.")
    lr: float = Field(default=1e-3, gt=0, description="Initial learning rate.")
    optimizer: Literal["adamw", "adam"] = Field(default="adamw", description="Optimiser (CheXNet used Adam).")
    weight_decay: float = Field(default=1e-4, ge=0, description="Weight decay (decoupled for AdamW, L2 for Adam).")
    scheduler: Literal["plateau", "cosine", "none"] = Field(
        default="plateau", description="LR schedule: reduce-on-plateau of the val metric (CheXNet), cosine, or none."
    )
    plateau_factor: float = Field(default=0.1, gt=0, lt=1, description="LR multiplier when the val metric plateaus.")
    plateau_patience: int = Field(default=1, ge=0, description="Epochs without improvement before the LR is reduced.")
    early_stopping_patience: int = Field(
        default=3, ge=0, description="Epochs without val improvement before training stops (0 = never stop early)."
    )
    loss: Literal["bce", "ce", "l1", "dice_bce", "dice", "dice_focal", "detector"] | None = Field(
        default=None,
        description=(
            "Loss; chosen from the task when unset (multilabel bce, multiclass ce, regression l1, "
            "segmentation dice_bce; segmentation also takes dice, bce and dice_focal; detection detector: "
            "the sum of the detector's own loss terms)."
        ),
    )
    pos_weight: bool = Field(
        default=False,
        description=(
            "Weight positives by negatives/positives of the train split (bce); for segmentation, weigh "
            "structures few images show more."
        ),
    )
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(), description="Training augmentation.")
    amp: bool = Field(default=True, description="Mixed precision on CUDA (bfloat16 autocast on CPU is not used).")
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    num_workers: int = Field(
        default=2, ge=0, description="DataLoader worker processes reading the memory-mapped shards."
    )
    workers: int = Field(
        default=1,
        ge=1,
        description=(
            "Data-parallel training processes (torch DDP: gloo on CPU, nccl on CUDA, one GPU each); batch_size is the "
            "global batch, split evenly across them, so lr stays as it is. Not the DataLoader's num_workers."
        ),
    )
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (default: all cores).")
    seed: int = Field(default=0, description="Seed for weights, augmentation and shuffling.")
    weights: str | None = Field(default=None, description="Local state-dict file to start from; nothing is downloaded.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop each epoch after this many steps (tests, smoke runs)."
    )
    in_chans: int = Field(default=1, ge=1, le=3, description="Input channels of the model (grey = 1).")
    channels_last: bool = Field(default=False, description="Use channels-last memory format (faster on some GPUs).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout before the classifier head.")


class EvaluateConfig(_Strict):
    """How a model is evaluated on the test split."""

    threshold_method: Literal["youden", "sensitivity"] = Field(
        default="youden", description="Operating point chosen on the val split: Youden's J or a target sensitivity."
    )
    target_sensitivity: float = Field(default=0.9, gt=0, le=1, description="Sensitivity aimed for by 'sensitivity'.")
    n_bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for confidence intervals (0 = none).")
    ci: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    calibration_bins: int = Field(default=10, ge=2, description="Bins of the reliability plot and ECE.")
    age_bands: list[float] = Field(
        default_factory=lambda: [0.0, 40.0, 60.0, 80.0, 200.0],
        description="Subgroup band edges: patient age in years (chest) or bone age in months (regression).",
    )
    pdf: bool = Field(
        default=True,
        description="Also print the HTML report to report.pdf with Chromium (/usr/bin/chromium) when it is installed.",
    )


class GateConfig(_Strict):
    """Quality gates a run must pass to be registered as challenger."""

    min_macro_auroc: float = Field(default=0.80, ge=0, le=1, description="Lowest acceptable test macro AUROC.")
    max_label_drop: float = Field(
        default=0.02, ge=0, description="Largest allowed per-label AUROC drop vs the champion on the same test split."
    )
    max_mae_months: float | None = Field(default=None, gt=0, description="Highest acceptable test MAE (regression).")
    max_mae_increase: float = Field(
        default=1.0, ge=0, description="Largest allowed MAE increase vs the champion (months)."
    )
    min_mean_dice: float = Field(
        default=0.5, ge=0, le=1, description="Lowest acceptable test mean Dice over the structures (segmentation)."
    )
    min_dice: dict[str, float] = Field(
        default_factory=dict,
        description="Lowest acceptable test Dice per structure, e.g. {Heart: 0.9} (segmentation; unnamed structures "
        "are held only to min_mean_dice).",
    )
    max_dice_drop: float = Field(
        default=0.02,
        ge=0,
        description="Largest allowed per-structure Dice drop vs the champion on the same test split.",
    )
    min_map50: float | None = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Lowest acceptable test mAP50: AP at IoU 0.5 averaged over the classes with a test box "
        "(detection; null: off).",
    )
    min_froc: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lowest acceptable test FROC CPM: the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false "
        "positives per image (detection; null: off).",
    )
    max_map_drop: float = Field(
        default=0.02,
        ge=0,
        description="Largest allowed test mAP50 drop vs the champion on the same test split (detection); with both "
        "runs' test boxes it fails only when the paired interval of the difference also lies below zero.",
    )
    min_positives: int = Field(
        default=10,
        ge=1,
        description="Fewest positive test images a label needs to be compared with the champion; a label with "
        "fewer is reported 'not gated: n=...' instead of judged on noise.",
    )
    min_negatives: int = Field(
        default=10, ge=1, description="Fewest negative test images a label needs to be compared with the champion."
    )
    comparison: Literal["bootstrap", "delong"] = Field(
        default="bootstrap",
        description="Paired test of the per-label AUROC difference on the images both models scored: a bootstrap "
        "over patients, or DeLong's test (treats images as independent).",
    )
    comparison_ci: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Confidence level of the paired test; a label fails only when its drop exceeds max_label_drop "
        "and the interval of the difference lies below zero.",
    )
    comparison_bootstrap: int = Field(
        default=1000, ge=100, description="Resamples of the paired bootstrap (comparison: bootstrap)."
    )


NOT_STATED = "not stated by the model's owner"
"""What the model card says where params.yaml's ``model_card:`` leaves a statement out."""


class ModelCardConfig(_Strict):
    """The model owner's statements in the evaluation report's model card (the measured parts are filled in)."""

    intended_use: str = Field(
        default=NOT_STATED,
        description="What the model is for: the clinical question, the users, the setting and the images it reads.",
    )
    out_of_scope: str = Field(
        default=NOT_STATED,
        description="Uses the model is not meant for (other modalities, populations, a standalone diagnosis ...).",
    )
    limitations: str = Field(
        default=NOT_STATED,
        description="Known limitations beyond those the report finds itself (labels too rare to gate, subgroups).",
    )
    known_failure_cases: str = Field(
        default=NOT_STATED,
        description="Image kinds the model is known to get wrong (devices, positioning, artefacts ...).",
    )
    owner: str = Field(default=NOT_STATED, description="Who answers for the model (a team or role, not a patient).")


class KafkaConfig(_Strict):
    """How ``radflow worker`` (and the doors that publish images) use Kafka: the ``kafka:`` section of params.yaml.

    :class:`radflow.kafka.KafkaSettings` reads ``RADFLOW_KAFKA_<FIELD>`` environment variables over
    these and adds the secrets (SASL password, TLS key files), which never belong in a workspace file.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    bootstrap: str = "localhost:9092"
    """Bootstrap servers, comma-separated host:port (a ``kafka://`` or ``tcp://`` prefix is accepted)."""
    images_topic: str = "radflow.images"
    """Images to score (one de-identified image per message, JSON: radflow.kafka.messages.ImageMessage)."""
    predictions_topic: str = "radflow.predictions"
    """Every answer, once its prediction row is stored."""
    urgent_topic: str = "radflow.urgent"
    """Answers with a finding at or over its ``urgent`` threshold."""
    dead_letter_topic: str = "radflow.dead-letter"
    """Messages that cannot be scored (undecodable, invalid, refused), with the reason."""
    group_id: str = "radflow-worker"
    """Consumer group of the workers: partitions are shared among its members."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism (with a SASL_* security protocol)."""
    max_in_flight: int = Field(default=64, ge=1)
    """Messages a worker scores at once; at this many its partitions are paused (backpressure)."""
    batch_size: int = Field(default=16, ge=1)
    """Most messages taken from the broker in one poll (the model's batcher groups them across polls)."""
    urgent: dict[str, float] = Field(default_factory=dict)
    """Per-label urgency thresholds (probability); an answer with a finding at or over one also goes to urgent_topic."""


class WorkflowStepConfig(_Strict):
    """One step of a workflow: a registered model, or glue (crop, resize, aggregate) between models."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The step's name, unique in its workflow.")
    model: str | None = Field(
        default=None, description="Run this model: models:/NAME@ALIAS, models:/NAME/N (or any MODEL reference)."
    )
    crop: Literal["box", "mask"] | None = Field(
        default=None, description="Cut the image at each box (box) or each structure's mask extent (mask) of `input`."
    )
    resize: int | None = Field(
        default=None, ge=8, le=4096, description="Resize each crop of `input` to this square side."
    )
    aggregate: Literal["max", "mean", "any"] | None = Field(
        default=None, description="Per-crop results of `input` back to one per image: max, mean or any (findings)."
    )
    input: str | None = Field(
        default=None,
        description="The step whose output this step takes; `image` is the request's image. Default: the step before.",
    )
    image: str = Field(default="image", description="crop: the step whose image is cut (`image`: the request's).")
    margin: float = Field(
        default=0.1, ge=0, le=2, description="crop: added on each side, a fraction of the box's side."
    )
    labels: list[str] | None = Field(default=None, description="crop: only boxes or structures of these labels.")
    min_score: float = Field(default=0.0, ge=0, le=1, description="crop by box: only boxes scoring at least this.")
    batch_size: int = Field(default=16, ge=1, le=1024, description="A model on crops: crops per ONNX Runtime call.")
    challenger: str | None = Field(
        default=None,
        description="A model step: a challenger model (e.g. models:/NAME@challenger) answering `challenger_weight` "
        "of the requests, routed as the server routes its own challenger (X-Routing-Key sticky).",
    )
    challenger_weight: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of requests the step's challenger answers; 0 = never."
    )
    levels: Literal["spine"] | list[str] | None = Field(
        default=None,
        description="crop by box: name the crops by vertical order (listed top to bottom): `spine` (T12..L5) "
        "or the names, top first; per-crop results then carry their `level`.",
    )
    levels_from: Literal["bottom", "top"] = Field(
        default="bottom",
        description="levels: count from the lowest box up (bottom: as lumbar levels are counted from the sacrum) "
        "or from the highest down; boxes beyond the names get none.",
    )

    @model_validator(mode="after")
    def _one_action(self) -> WorkflowStepConfig:
        given = [k for k in ("model", "crop", "resize", "aggregate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"step {self.name!r} needs exactly one of model, crop, resize, aggregate (it has {given or 'none'})"
            )
        if self.challenger is not None and self.model is None:
            raise ValueError(f"step {self.name!r}: a challenger is for a model step (it has {given[0]})")
        if self.levels is not None and self.crop != "box":
            raise ValueError(f"step {self.name!r}: levels name the boxes of a crop by box (crop: box)")
        if isinstance(self.levels, list) and (not self.levels or len(set(self.levels)) != len(self.levels)):
            raise ValueError(f"step {self.name!r}: levels must be distinct names, top first (got {self.levels})")
        return self


class WorkflowConfig(_Strict):
    """A workflow: a DAG of registered models and glue steps served as one (``/v1/workflows/NAME/predict``)."""

    description: str = Field(default="", description="What the workflow answers, for the listing.")
    steps: list[WorkflowStepConfig] = Field(min_length=1, description="The steps; each takes `input`'s output.")
    output: str | None = Field(default=None, description="The step whose output is the answer (default: the last).")
    gates: dict[str, float] = Field(
        default_factory=dict,
        description="`radflow workflow evaluate`: minimums of end-to-end metrics (e.g. end_to_end_sensitivity: 0.6, "
        "detection_recall: 0.9); the verdict is in the result and on the parent MLflow run.",
    )


class WorkflowStageConfig(_Strict):
    """The ``workflow`` stage of a workflow workspace: each step an ordinary pipeline in its folder, judged as one.

    Each step folder holds its own params.yaml and dvc.yaml (a radflow pipeline registering one model); the
    workspace's own dvc.yaml holds the ``workflow`` stage, which composes the versions the steps just registered
    into workflow ``workflow``, runs it over ``dataset``'s test split against ``boxes``' per-box truth (or, with
    ``evaluation: values``, ``values``' per-image truth: bone age's MAE)
    (:func:`radflow.workflow.evaluate.evaluate_workflow`: one parent MLflow run, a child per step), gates the
    end-to-end metrics (the workflow's ``gates``, and ``max_drop`` against the champion composition on the
    same images) and, when every step passed its own gates and the workflow passed, makes the composition the
    champion of every step.
    """

    workflow: str = Field(min_length=1, description="The `workflows:` entry the stage composes and judges.")
    steps: list[str] = Field(min_length=1, description="Step folders (workspace-relative), each a radflow pipeline.")
    evaluation: Literal["boxes", "values"] = Field(
        default="boxes",
        description="boxes: a detect -> crop -> classify workflow judged against per-box truth (`boxes`); values: "
        "a workflow whose answer is a value (segment -> crop by mask -> regress) against per-image truth (`values`).",
    )
    dataset: str = Field(description="The dataset whose test split judges the workflow (workspace-relative).")
    boxes: str | None = Field(
        default=None, description="boxes: the per-box truth table (COCO annotations.json or CSV), workspace-relative."
    )
    values: str | None = Field(
        default=None,
        description="values: the per-image truth table (a CSV with path or RSNA's id, then label), workspace-relative.",
    )
    label: str = Field(
        min_length=1, description="The per-box 0/1 attribute the classifier answers, or the per-image true value."
    )
    sex_field: str | None = Field(
        default=None, description="values: the table's sex field (RSNA's male), given to the regression."
    )
    level_field: str | None = Field(default=None, description="The per-box attribute naming its level, if any.")
    iou: float = Field(default=0.5, gt=0, le=1, description="IoU at which a detected box matches a true one.")
    max_drop: dict[str, float] = Field(
        default_factory=dict,
        description="End-to-end metrics that may get worse by at most this much against the champion composition "
        "(e.g. box_auroc: 0.02 may fall, mae: 3 may rise); checked when the champions differ from the new versions.",
    )
    promote: bool = Field(
        default=True, description="Make every step's new version champion when all gates (steps and workflow) pass."
    )

    @model_validator(mode="after")
    def _truth_table(self) -> WorkflowStageConfig:
        if getattr(self, self.evaluation) is None:
            raise ValueError(f"evaluation {self.evaluation} judges against a truth table: set {self.evaluation}")
        return self

    @property
    def table(self) -> str:
        """The truth table the stage's evaluation reads (``boxes`` or ``values``)."""
        table = getattr(self, self.evaluation)
        assert isinstance(table, str)
        return table


class Params(_Strict):
    """The whole params.yaml."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(), description="Data source and ingest settings.")
    split: SplitConfig = Field(default_factory=lambda: SplitConfig(), description="Patient-level split settings.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(), description="Training settings.")
    evaluate: EvaluateConfig = Field(default_factory=lambda: EvaluateConfig(), description="Evaluation settings.")
    gates: GateConfig = Field(default_factory=lambda: GateConfig(), description="Registry quality gates.")
    export: ExportConfig = Field(default_factory=lambda: ExportConfig(), description="ONNX export settings.")
    registry: RegistryConfig = Field(default_factory=lambda: RegistryConfig(), description="Model registry settings.")
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig(), description="Serving settings.")
    model_card: ModelCardConfig = Field(
        default_factory=lambda: ModelCardConfig(),
        description="The model owner's statements in the evaluation report's model card.",
    )
    kafka: KafkaConfig = Field(default_factory=lambda: KafkaConfig(), description="Kafka worker settings.")
    workflows: dict[str, WorkflowConfig] = Field(
        default_factory=dict, description="Workflows by name: models and glue steps served as one (radflow.workflow)."
    )
    workflow_stage: WorkflowStageConfig | None = Field(
        default=None,
        description="A workflow workspace (`radflow init --workflow NAME`): its step pipelines and the workflow "
        "stage that judges their models together, end to end (radflow.pipeline.workflow).",
    )

    def with_overrides(self, overrides: dict[str, Any]) -> Params:
        """A copy with dotted keys replaced, e.g. ``{"train.epochs": 3, "train.augment.hflip": True}``.

        ``None`` values are skipped, so CLI flags that were not given leave the file's value alone.
        """
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            node: dict[str, Any] = data
            parts = key.split(".")
            for depth, part in enumerate(parts):
                model_fields = _fields_at(parts[:depth])
                if model_fields is not None and part not in model_fields:
                    where = ".".join(parts[:depth]) or "params"
                    raise ConfigError(
                        f"unknown setting {key!r} (no {part!r} in {where}).{_unknown(part, model_fields)}"
                    )
                if depth == len(parts) - 1:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
        return validate_params(data, "overrides")

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (what a run logs as config/params.yaml)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _fields_at(path: list[str]) -> list[str] | None:
    """Field names of the model at a dotted path, or None inside a free-form dict."""
    model: type[BaseModel] = Params
    for part in path:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return list(model.model_fields)


_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "learningrate": ("lr",),
    "lr0": ("lr",),
    "batch": ("batch_size", "max_batch_size"),
    "bs": ("batch_size", "max_batch_size"),
    "batchsize": ("batch_size", "max_batch_size"),
    "n_epochs": ("epochs",),
    "num_epochs": ("epochs",),
    "max_epochs": ("epochs",),
    "epoch": ("epochs",),
    "model": ("arch",),
    "architecture": ("arch",),
    "backbone": ("arch",),
    "network": ("arch",),
    "workers": ("num_workers", "decode_workers"),
    "n_workers": ("num_workers", "decode_workers"),
    "wd": ("weight_decay",),
    "optimiser": ("optimizer",),
    "optim": ("optimizer",),
    "lr_scheduler": ("scheduler",),
    "schedule": ("scheduler",),
    "patience": ("early_stopping_patience",),
    "steps": ("max_steps",),
    "max_iters": ("max_steps",),
    "mixed_precision": ("amp",),
    "fp16": ("amp",),
    "image_size": ("size",),
    "img_size": ("size",),
    "resolution": ("size",),
    "in_channels": ("in_chans",),
    "channels": ("in_chans",),
    "flip": ("hflip",),
    "horizontal_flip": ("hflip",),
    "rotation": ("rotation_deg",),
    "zoom": ("scale",),
    "bootstrap": ("n_bootstrap", "comparison_bootstrap"),
    "n_boot": ("n_bootstrap", "comparison_bootstrap"),
    "confidence": ("ci", "comparison_ci"),
    "bins": ("calibration_bins",),
    "threshold": ("threshold_method",),
    "min_auroc": ("min_macro_auroc",),
    "min_auc": ("min_macro_auroc",),
    "val_fraction": ("val",),
    "validation": ("val",),
    "test_fraction": ("test",),
    "gpu": ("device",),
    "pretrained": ("weights",),
    "checkpoint": ("weights",),
    "quantize": ("int8",),
    "quantise": ("int8",),
    "opset_version": ("opset",),
    "num_threads": ("threads",),
}
"""Names other tools use for a setting, mapped to radflow's (the first one a section has)."""


def _unknown(name: str, fields: list[str]) -> str:
    """The did-you-mean hint for ``name`` among a section's ``fields``: by meaning first, then spelling."""
    aliases = {
        alias: next(t for t in targets if t in fields)
        for alias, targets in _ALIASES.items()
        if any(t in fields for t in targets)
    }
    return did_you_mean(name, fields, aliases)


def validate_params(data: dict[str, Any], source: str) -> Params:
    """``data`` (a parsed params.yaml) as :class:`Params`; a ConfigError naming ``source`` and each bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            key = ".".join(loc)
            if err["type"] == "extra_forbidden":
                fields = _fields_at(loc[:-1]) or []
                problems.append(f"unknown key {key!r}.{_unknown(loc[-1], fields)}")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, ``float | null``, ``adamw|adam``, ``list[str]``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def _plain(description: str | None) -> str:
    """A field description on one line, reST double-backtick literals as single backticks (comments, CLI)."""
    return " ".join((description or "").split()).replace("``", "`")


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def describe_params(prefix: str = "") -> list[dict[str, Any]]:
    """Every settable key (``-S KEY=VALUE`` or params.yaml) with its type, default and description.

    ``prefix`` keeps the keys under a section or key (``"train"``, ``"train.augment"``); one that
    matches nothing raises ConfigError with a did-you-mean over the section names.
    """
    defaults = Params().model_dump(mode="json")
    rows: list[dict[str, Any]] = []

    def walk(model: type[BaseModel], path: list[str], values: dict[str, Any]) -> None:
        for name, info in model.model_fields.items():
            sub = _sub_model(info.annotation)
            if sub is not None:
                walk(sub, [*path, name], values[name])
                continue
            key = ".".join([*path, name])
            rows.append(
                {
                    "key": key,
                    "type": _type_name(info.annotation),
                    "default": values[name],
                    "description": _plain(info.description),
                }
            )

    walk(Params, [], defaults)
    if not prefix:
        return rows
    # A section, a key, or the start of keys within a section (``serve.oidc`` -> serve.oidc_*).
    chosen = [r for r in rows if r["key"].startswith(prefix if "." in prefix else prefix + ".") or r["key"] == prefix]
    if not chosen:
        sections = sorted({r["key"].rsplit(".", 1)[0] for r in rows})
        raise ConfigError(
            f"no settings under {prefix!r}.{did_you_mean(prefix, sections)} Sections: {', '.join(sections)}."
        )
    return chosen


def _yaml_value(value: Any) -> str:
    """One value on one line: a scalar, or a list or mapping in flow style (``[0.0, 40.0]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**20)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def params_yaml(params: Params) -> str:
    """params.yaml text with each key's description as a comment above it (what ``radflow init`` writes).

    It reads back to the same values as :meth:`Params.to_yaml`; only the comments are added.
    """
    lines: list[str] = []

    def comment(text: str | None, indent: str) -> None:
        for line in textwrap.wrap(_plain(text), width=118 - len(indent)):
            lines.append(f"{indent}# {line}")

    def walk(model: type[BaseModel], values: dict[str, Any], indent: str) -> None:
        for name, info in model.model_fields.items():
            comment(info.description, indent)
            sub = _sub_model(info.annotation)
            if sub is not None:
                lines.append(f"{indent}{name}:")
                walk(sub, values[name], indent + "  ")
            else:
                lines.append(f"{indent}{name}: {_yaml_value(values[name])}")

    values = params.model_dump(mode="json")
    for number, (section, info) in enumerate(Params.model_fields.items()):
        if number:
            lines.append("")
        comment(info.description, "")
        model = _sub_model(info.annotation)
        if model is None:  # a mapping of named entries (workflows): written as given
            lines.append(yaml.safe_dump({section: values[section]}, sort_keys=False).rstrip("\n"))
            continue
        lines.append(f"{section}:")
        walk(model, values[section], "  ")
    return "\n".join(lines) + "\n"


def load_params(path: Path | None) -> Params:
    """Read params.yaml (``None``: all defaults). Unknown keys and bad values raise ConfigError."""
    if path is None:
        return Params()
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (train:, evaluate:, ...), got {type(data).__name__}."
        )
    return validate_params(data, str(path))


def flatten_params(params: Params) -> dict[str, str]:
    """``{"train.arch": "small_cnn", "train.augment.hflip": "False", ...}`` for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)

    walk("", params.model_dump(mode="json"))
    return out
