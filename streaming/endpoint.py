"""Rule-based endpointing on the streaming CTC labels."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointConfig", "Endpointer"]


@dataclass(frozen=True)
class EndpointConfig:
    """A segment ends after ``trailing_blank_ms`` of blank once speech was seen, or when it reaches
    ``max_segment_ms``. ``max_silence_ms`` of blank with no speech at all also closes a (silent)
    segment, so that state stays bounded on long silences. None disables a rule."""

    trailing_blank_ms: int | None = 800
    max_segment_ms: int | None = 20000
    max_silence_ms: int | None = 5000


class Endpointer:
    """Counts blank frames (by the greedy CTC label) of the current segment."""

    def __init__(self, cfg: EndpointConfig, frame_ms: int = 40):
        self.cfg = cfg
        self.frame_ms = frame_ms
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.trailing_blank = 0
        self.speech = False

    def update(self, labels: list[int], blank: int = 0) -> bool:
        """Feed the greedy labels of new frames; True when the segment should end here."""
        for lab in labels:
            self.frames += 1
            if lab == blank:
                self.trailing_blank += 1
            else:
                self.trailing_blank = 0
                self.speech = True
        c, ms = self.cfg, self.frame_ms
        if c.max_segment_ms is not None and self.frames * ms >= c.max_segment_ms:
            return True
        if self.speech:
            return c.trailing_blank_ms is not None and self.trailing_blank * ms >= c.trailing_blank_ms
        return c.max_silence_ms is not None and self.trailing_blank * ms >= c.max_silence_ms
