"""How much one WADO-RS request may ask the gateway to produce: frames, picture size, decoding.

Without bounds, one request can take the machine: ``rendered?viewport=99999,99999`` asks for a
10-gigapixel picture, a frame list can repeat one frame a million times, and a study of large
compressed images rendered whole decodes every one of them. Each bound is a 400 naming it before
any work starts (the pixels are known from the instances' headers), so the answer never starts
and then fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import BadRequest

__all__ = ["WorkLimits"]


@dataclass(frozen=True)
class WorkLimits:
    """The bounds of one request (``gateway.max_frames_per_request`` and its neighbours in the settings).

    Attributes
    ----------
    max_frames : int
        Frames in one frames request, pictures in one rendered answer.
    max_rendered_size : int
        The largest viewport width or height of a rendered or thumbnail picture, in pixels.
    max_decoded_pixels : int
        Samples (rows x columns x samples per pixel, summed over frames) one request may decode.
    """

    max_frames: int = 1000
    max_rendered_size: int = 4096
    max_decoded_pixels: int = 256 * 1024 * 1024

    def check_frames(self, count: int) -> None:
        """Raise :class:`BadRequest` when `count` frames or pictures are more than one request may have."""
        if count > self.max_frames:
            raise BadRequest(
                f"{count} frames or pictures asked for; one request may have at most {self.max_frames} "
                "(max_frames_per_request)"
            )

    def check_viewport(self, width: int, height: int) -> None:
        """Raise :class:`BadRequest` when a viewport is larger than a picture may be."""
        if width > self.max_rendered_size or height > self.max_rendered_size:
            raise BadRequest(
                f"viewport: {width}x{height} is larger than {self.max_rendered_size}x{self.max_rendered_size} "
                "pixels (max_rendered_size)"
            )

    def check_decoding(self, samples: int) -> None:
        """Raise :class:`BadRequest` when decoding `samples` pixel samples is more than one request may cost."""
        if samples > self.max_decoded_pixels:
            raise BadRequest(
                f"the request would decode {samples} pixel samples; one request may decode at most "
                f"{self.max_decoded_pixels} (max_decoded_pixels): ask for fewer frames or instances"
            )
