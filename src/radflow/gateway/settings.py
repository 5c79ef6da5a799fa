"""How one ``radflow gateway`` node runs: its DICOM identity, who may send, when a study is complete, and the rules.

The model, store and every other serving setting come from :class:`radflow.inference.ServeSettings`
(the one source of serving configuration); these fields are the DICOM node's own.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radflow.gateway.routing import Rule
from radflow.kafka.settings import KafkaSettings
from radflow.pacs.settings import ResultSettings
from radflow.pacs.settings import check_ae_title as _check_ae_title

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseModel):
    """The DICOM node's settings (``radflow gateway`` flags)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = "RADFLOW"
    """This node's AE title; calling SCUs must address it (the called AE title) or are refused."""
    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` to accept modalities from the network)."""
    port: int = Field(default=11112, ge=0, le=65535)
    """TCP port (11112 is DICOM's registered port; 0 picks a free one, as the tests do)."""
    allowed_aes: list[str] = []
    """Calling AE titles allowed to associate; empty allows any (say so in a log line at start)."""
    stable_after_s: float = Field(default=5.0, gt=0)
    """A study is complete (and scored) after this long without a new instance, as Orthanc's StableAge."""
    rules: list[Rule] = []
    """Routing rules, first match wins; none: every image series goes to the served model."""
    max_study_s: float = Field(default=3600, gt=0)
    """A study still receiving instances this long after its first is scored anyway, so it is never held forever."""
    max_pending_mb: float = Field(default=2048, gt=0)
    """Received, not yet scored instances held in memory (MiB); beyond it C-STORE answers 0xA700, the sender retries."""
    max_concurrent: int = Field(default=8, ge=1)
    """Images of stable studies scored at once (the service batches them; more waits, none is refused)."""
    results: ResultSettings | None = None
    """Where each scored image's DICOM result (SR, SEG for masks) is sent; none: results stay in the store."""
    pull_url: str | None = None
    """A DICOMweb root to pull studies from (QIDO-RS + WADO-RS) besides those sent to the node."""
    pull_studies: list[str] = []
    """Study Instance UIDs pulled from ``pull_url`` at start."""
    poll_every_s: float | None = Field(default=None, gt=0)
    """Ask ``pull_url`` this often for studies not yet taken (Study Date/Time at or after ``pull_since``)."""
    pull_since: datetime | None = None
    """Polling takes studies from this date and time on (default: when the gateway started)."""

    kafka: KafkaSettings | None = None
    """Kafka mode: routed images go to the images topic for ``radflow worker``s instead of being scored here."""
    kafka_group_id: str | None = None
    """Kafka mode: this gateway's consumer group on the answer topics (default ``radflow-gateway-<AE title>``).
    Each gateway process needs its own, as the sources it matches answers to are in its memory."""
    max_awaiting_mb: float = Field(default=1024, gt=0)
    """Kafka mode: source instances kept for their answers (MiB); beyond it the oldest are dropped (``evicted``)."""
    answer_timeout_s: float = Field(default=600, gt=0)
    """Kafka mode: a source whose answer has not come after this long is dropped (``expired``)."""
    drain_s: float = Field(default=10, ge=0)
    """Kafka mode: at shutdown, how long to wait for the answers still awaited."""

    @property
    def answer_group(self) -> str:
        """The consumer group this gateway reads answers in (Kafka mode)."""
        return self.kafka_group_id or f"radflow-gateway-{self.ae_title.lower()}"

    @field_validator("pull_url")
    @classmethod
    def _pull(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"pull URL {value!r} is not a DICOMweb root (http://host:port/dicom-web)")
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value, "ae_title")

    @model_validator(mode="after")
    def _kafka_rules(self) -> GatewaySettings:
        named = [r.name or "?" for r in self.rules if r.model]
        if self.kafka is not None and named:
            raise ValueError(
                f"in Kafka mode the workers' model scores every routed series, and routing rules name a model "
                f"({', '.join(named)}); drop the rules' model or run without --kafka-bootstrap"
            )
        return self

    @model_validator(mode="after")
    def _pull_needs_url(self) -> GatewaySettings:
        if self.pull_url is None and (self.pull_studies or self.poll_every_s is not None):
            raise ValueError("pulling studies (--pull-study, --poll-every) needs a DICOMweb root (--pull-from)")
        return self

    @field_validator("allowed_aes")
    @classmethod
    def _allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v, "allowed calling AE title") for v in values]
