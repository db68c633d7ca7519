"""The JSON answer of `POST /predict`, as a schema: pydantic models that FastAPI publishes in the server's OpenAPI
(`/openapi.json`, `/docs`), so that clients generated from it (openapi-generator, openapi-python-client) get typed
fields. The answer itself is built by `medcad.inference.responses.prediction_json`; the tests validate real answers
of every task against this schema, so that a field added there and not here fails them (`extra="forbid"`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# a box as every output lists it (`medcad.data.boxes.listed_boxes`): corners in the image's pixels, score, class
Box = tuple[float, float, float, float, float, str]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassMask(Strict):
    value: int = Field(description="The class's value in the mask PNG.")
    coco_rle: dict[str, str | list[int]] = Field(
        description="COCO's compressed RLE of the class's pixels {size: [H, W], counts}, for pycocotools.mask.decode."
    )


class MaskAnswer(Strict):
    """The thresholded lesion mask at the image's own size (`?mask=png` or `rle`)."""

    format: Literal["png", "rle"]
    height: int
    width: int
    threshold: float = Field(description="Lesion probability from which a pixel is lesion.")
    data: str | None = Field(
        None,
        description="png: base64 PNG, 0 / 255 for lesion; label-map models: each pixel's class value (16-bit where a "
        "value exceeds 255).",
    )
    counts: list[int] | None = Field(
        None, description="rle, one-lesion models: row-major run lengths of the lesion, starting with background."
    )
    classes: dict[str, str] | None = Field(None, description="Label-map models: {mask value: class name}.")
    lesion_counts: list[int] | None = Field(
        None, description="rle, label-map models: run lengths (as `counts`) of the lesion of any class."
    )
    per_class: dict[str, ClassMask] | None = Field(None, description="rle, label-map models: {class name: its mask}.")


class Heatmap(Strict):
    image: str = Field(description="The Grad-CAM picture as a PNG data URL.")
    caption: str


class DecidedAt(Strict):
    positive: str
    threshold: float


class PredictAnswer(Strict):
    """One image's result. Which fields are there follows the model's task: `probabilities` (a class head),
    `boxes` (a detector), the frame decision and `mask` (a segmenter); `fraction_<class>` per lesion class of a
    label-map model."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"patternProperties": {"^fraction_": {"type": "number"}}}
    )

    task: str = Field(description="The model's task (classify, multilabel, segment, segment-multiclass, ...).")
    image: Literal["upload"] = Field(description="Always 'upload': an upload's file name is never echoed.")
    label: str = Field(description="The decision: a class, 'lesion' / 'no lesion', a box class or 'background'.")
    score: float = Field(description="What the decision rests on (a probability, a box score, a lesion probability).")
    threshold: float | None = Field(description="The deciding output's threshold; null for the most probable class.")
    width: int
    height: int
    probabilities: dict[str, float] | None = Field(None, description="{class: probability} of a class head.")
    decided_at: DecidedAt | None = Field(None, description="A two-class decision at a validated operating point.")
    boxes: list[Box] | None = Field(None, description="[[x0, y0, x1, y1, score, class]] in the image's pixels.")
    frame_decision: Literal["lesion", "no lesion"] | None = Field(None, description="A mask's own frame decision.")
    frame_score: float | None = None
    frame_score_kind: Literal["lesion_area", "p_lesion"] | None = None
    frame_threshold: float | None = None
    frame_reason: str | None = Field(None, description="Why the frame decision is what it is, in words.")
    lesion_fraction: float | None = Field(None, description="The share of the image at or above `threshold`.")
    mask: MaskAnswer | None = None
    overlay: str | None = Field(None, description="?overlay=true: the drawn overlay as a PNG data URL.")
    heatmap: Heatmap | None = Field(None, description="?gradcam=true: the Grad-CAM picture.")
    warnings: list[str] | None = Field(None, description="What makes this prediction doubtful, in words.")
    frame: int | None = Field(None, description="Multi-frame uploads: the frame (page) answered for.")
    frames: int | None = None
    pages: list[int] | None = Field(None, description="The frames that are images of the set (a TIFF's).")
    kind: str | None = Field(
        None, description="Multi-frame uploads: the file's kind (dicom, tiff, gif, webp, png, nifti)."
    )


class VideoJobAccepted(Strict):
    job: str = Field(description="The job's id.")
    status_url: str = Field(description="Where to poll it: /jobs/{job}.")


class FrameRecord(BaseModel):
    """One frame of a clip, as the video's frames CSV has it: its decision, what the task gives per frame
    (`p_<class>` of a class head; a mask's frame decision, `lesion_fraction`, `fraction_<class>`; a detector's
    `n_boxes`, `boxes`) and the decision smoothed over the last frames."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"patternProperties": {"^(p|fraction)_": {"type": "number"}}}
    )

    frame: int = Field(description="The frame's index in the clip.")
    time_s: float | None = Field(description="Its presentation time in seconds (null where the clip gives none).")
    image: str
    label: str
    score: float
    smoothed: str = Field(description="The decision over the last `smooth` frames.")
    smoothed_score: float
    decided_at: str | None = None
    frame_decision: Literal["lesion", "no lesion"] | None = None
    frame_score: float | None = None
    lesion_fraction: float | None = None
    n_boxes: int | None = None
    boxes: list[Box] | None = None


class JobAnswer(Strict):
    """A video job: queued or running with its progress, then done with a summary and one record per frame, or
    failed with why."""

    job: str
    status: Literal["checking", "queued", "running", "done", "failed"]
    frames_done: int
    frames_total: int = Field(description="The frames expected (an estimate until the clip is decoded).")
    summary: dict[str, Any] | None = Field(
        None,
        description="Done: frames predicted and dropped, the decoding's findings (truncation, rotation, gaps), speed "
        "(seconds, frames_per_s, latency_ms_per_frame), the source's frame rate and the smoothing window.",
    )
    frames: list[FrameRecord] | None = None
    error: str | None = Field(None, description="Failed: what went wrong.")
