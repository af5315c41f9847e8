"""What a training run reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainInputs:
    events: Path | str | None  # a URL (hdfs://, s3a://) only with the spark engine
    items: Path | None = None
    users: Path | None = None
    event_store: str | None = None  # URL of the server's event store (RecordEvents, ForgetUser)
