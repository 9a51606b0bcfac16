"""spx manifest schema, version 1.

A manifest is a UTF-8 JSON-lines file. The optional first line is a header
`{"spx_manifest": 1}` naming the schema version; every other line is one utterance:

| field        | type    | required | meaning                                                        |
|--------------|---------|----------|----------------------------------------------------------------|
| id           | str     | yes      | unique utterance id                                            |
| audio        | str     | yes      | audio path; relative paths resolve against the manifest folder |
| duration     | float   | yes      | seconds (> 0)                                                  |
| offset       | float   | no       | start within the audio file, seconds (segments)                |
| text         | str     | no       | transcript (ASR) or input text (TTS)                           |
| speaker      | str     | no       | speaker id                                                     |
| language     | str     | no       | BCP-47 language tag                                            |
| label        | str     | no       | class label (classification)                                   |
| sample_rate  | int     | no       | Hz                                                             |
| channels     | int     | no       |                                                                |
| meta         | object  | no       | anything else, kept as is                                      |

`audio` may also be a Kaldi-style piped command ending in `|` (kept verbatim).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
HEADER_KEY = "spx_manifest"
FIELDS = ("id", "audio", "duration", "offset", "text", "speaker", "language", "label", "sample_rate", "channels", "meta")
OPTIONAL_DEFAULTS = {"offset": 0.0}


class ManifestRowError(ValueError):
    """A manifest row that does not fit the schema; message says which field and why."""


@dataclass(slots=True)
class Utterance:
    id: str
    audio: str
    duration: float
    offset: float = 0.0
    text: str | None = None
    speaker: str | None = None
    language: str | None = None
    label: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_piped(self) -> bool:
        return self.audio.rstrip().endswith("|")

    def to_json_dict(self) -> dict[str, Any]:
        """Compact dict: None fields, a zero offset and an empty meta are left out."""
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and not (k == "offset" and v == 0.0) and not (k == "meta" and not v)}

    @classmethod
    def from_dict(cls, d: Any) -> "Utterance":
        if not isinstance(d, dict):
            raise ManifestRowError(f"a row must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise ManifestRowError(f"unknown field(s) {sorted(unknown)}; put extra data under 'meta'")
        for key in ("id", "audio", "duration"):
            if key not in d or d[key] is None:
                raise ManifestRowError(f"missing required field {key!r}")
        if not isinstance(d["id"], str) or not d["id"]:
            raise ManifestRowError(f"'id' must be a non-empty string, got {d['id']!r}")
        if not isinstance(d["audio"], str) or not d["audio"]:
            raise ManifestRowError(f"'audio' must be a non-empty string, got {d['audio']!r}")
        for key in ("duration", "offset"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ManifestRowError(f"{key!r} must be a number of seconds, got {v!r}")
            if isinstance(v, int) and abs(v) > 1e308:  # float() of it would overflow
                raise ManifestRowError(f"{key!r} must be a finite number of seconds, got an integer beyond the float range")
        if not d["duration"] > 0 or d["duration"] != d["duration"] or d["duration"] == float("inf"):
            raise ManifestRowError(f"'duration' must be > 0 seconds, got {d['duration']!r}")
        if d.get("offset") is not None and d["offset"] < 0:
            raise ManifestRowError(f"'offset' must be >= 0, got {d['offset']!r}")
        for key in ("text", "speaker", "language", "label"):
            v = d.get(key)
            if v is not None and not isinstance(v, str):
                raise ManifestRowError(f"{key!r} must be a string, got {v!r}")
        for key in ("sample_rate", "channels"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ManifestRowError(f"{key!r} must be a positive integer, got {v!r}")
        if d.get("meta") is not None and not isinstance(d["meta"], dict):
            raise ManifestRowError(f"'meta' must be an object, got {d['meta']!r}")
        return cls(
            id=d["id"], audio=d["audio"], duration=float(d["duration"]), offset=float(d.get("offset") or 0.0),
            text=d.get("text"), speaker=d.get("speaker"), language=d.get("language"), label=d.get("label"),
            sample_rate=d.get("sample_rate"), channels=d.get("channels"), meta=d.get("meta") or {},
        )
