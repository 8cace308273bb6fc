"""``POST /av-event``: its answer (it becomes the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SecondLabel(BaseModel):
    """The label of one second ``[t, t + 1)`` of the video."""

    t: int = Field(description="second index")
    label: str
    score: float = Field(description="softmax probability of the label")


class AvEvent(BaseModel):
    """Consecutive seconds with the same non-background label."""

    start_s: float
    end_s: float = Field(description="exclusive end, seconds")
    label: str
    score: float = Field(description="mean over the event's seconds of the label's probability")


class AvEventResponse(BaseModel):
    """``POST /av-event`` answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2a9c0d1e7b4c55",
                    "adapter": "ave",
                    "version": 1,
                    "duration_s": 3.0,
                    "seconds": [
                        {"t": 0, "label": "background", "score": 0.9},
                        {"t": 1, "label": "Dog barking", "score": 0.8},
                        {"t": 2, "label": "Dog barking", "score": 0.7},
                    ],
                    "events": [{"start_s": 1, "end_s": 3, "label": "Dog barking", "score": 0.75}],
                    "notes": [],
                }
            ]
        }
    )

    request_id: str
    adapter: str = Field(description="adapter name")
    version: int = Field(description="version that served this answer")
    duration_s: float = Field(description="duration of the video track, seconds")
    seconds: list[SecondLabel] = Field(description="every second of the video, in order")
    events: list[AvEvent] = Field(description="merged non-background runs, in order")
    notes: list[str] = Field(
        default_factory=list,
        description="what the answer leaves out, e.g. the seconds of an audio track longer than "
        "the video that were cut and not scored; empty when nothing was",
    )
