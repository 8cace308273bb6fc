"""``POST /classify``: its answer (it becomes the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LabelScore(BaseModel):
    """One label and its score."""

    label: str
    score: float = Field(description="softmax probability (single-label) or sigmoid (multi-label)")


class Window(BaseModel):
    """One window of a clip longer than the adapter's window."""

    start_s: float
    end_s: float
    labels: list[LabelScore]


class AdapterResult(BaseModel):
    """The answer of one adapter for the clip."""

    adapter: str = Field(description="adapter name")
    version: int = Field(description="version that served this answer")
    labels: list[LabelScore] = Field(
        description="top-k labels of the clip; for clips longer than one window the score is the "
        "mean of the window scores"
    )
    timeline: list[Window] | None = Field(
        None, description="per-window top-k labels; only for clips longer than one window"
    )


class ClassifyResponse(BaseModel):
    """``POST /classify`` answer: one result per adapter named, in the order named."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2a9c0d1e7b4c55",
                    "duration_s": 5.0,
                    "results": [
                        {
                            "adapter": "esc50",
                            "version": 2,
                            "labels": [
                                {"label": "dog", "score": 0.91},
                                {"label": "rooster", "score": 0.04},
                            ],
                            "timeline": None,
                        }
                    ],
                }
            ]
        }
    )

    request_id: str
    duration_s: float = Field(description="duration of the decoded clip, seconds")
    results: list[AdapterResult]
