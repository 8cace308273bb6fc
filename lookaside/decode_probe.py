"""What an audio upload's bytes claim, checked before decoding, and the refusals decoding shares.

:func:`sniff` names the container from its magic bytes; :func:`check_declared_size` refuses a
WAV, AIFF or Ogg file whose own header promises more bytes than arrived (libsndfile reads a cut
file silently); :func:`check_sample_rate` refuses rates no recording has before anything is
resampled. The :class:`~lookaside.errors.BadAudio` constructors here (:func:`truncated`,
:func:`too_long`, :func:`too_large`) serve the header checks and the block decoders of
:mod:`lookaside.decode` alike, so a refusal reads the same whichever step finds it. Pure
functions of the bytes and numbers given: no decoding, no state, any thread.
"""

from __future__ import annotations

import struct

from lookaside.errors import BadAudio

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SUPPORTED",
    "check_declared_size",
    "check_sample_rate",
    "ffmpeg_message",
    "length_slack",
    "sniff",
    "too_large",
    "too_long",
    "truncated",
]

MIN_SAMPLE_RATE = 1_000
"""Lowest sample rate accepted (Hz); telephone audio is 8 kHz."""
MAX_SAMPLE_RATE = 384_000
"""Highest sample rate accepted (Hz); studio formats stop at 384 kHz."""
SUPPORTED = (
    "upload WAV, FLAC, Ogg (Vorbis/Opus), MP3 or AAC/M4A audio, or a video with a sound track"
)


def check_sample_rate(rate: int) -> None:
    """Refuse rates no recording has before anything is resampled.

    Resampling cost grows with the ratio of the rates (a 1 Hz header resampled to 16 kHz builds
    a 16,000-phase kernel), so the rate is checked, not trusted.
    """
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudio(
            "bad_rate",
            f"the audio's sample rate is {rate} Hz, outside the {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz that real recordings use (the header is wrong or the file "
            "is damaged); re-export it at a standard rate such as 16, 44.1 or 48 kHz",
        )


def too_large(channels: int, rate: int, samples: int, limit: int, *, at_least: bool) -> BadAudio:
    """The refusal of audio that decodes to more samples than the budget."""
    amount = f"more than {limit:,}" if at_least else f"{samples:,}"
    seconds = samples / max(channels, 1) / rate
    return BadAudio(
        "too_large",
        f"the audio decodes to {amount} samples ({channels} channel(s) x {rate} Hz x "
        f"{'over ' if at_least else ''}{seconds:.1f} s), over the limit of {limit:,} decoded "
        "samples per request; downmix it to mono, resample it to 16 kHz or trim it before "
        "uploading, or raise the limit (LOOKASIDE_MAX_DECODED_SAMPLES on the server)",
    )


def sniff(data: bytes) -> str | None:
    """Name of the audio/video container the magic bytes announce, if any."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    magics = {b"fLaC": "FLAC", b"OggS": "Ogg", b"\x1aE\xdf\xa3": "Matroska/WebM", b"ID3": "MP3"}
    return next((name for magic, name in magics.items() if head.startswith(magic)), None)


def truncated(kind: str, detail: str) -> BadAudio:
    return BadAudio(
        "truncated", f"the {kind} file is truncated or damaged ({detail}); upload the complete file"
    )


def check_declared_size(data: bytes) -> None:
    """Refuse files whose own header promises more bytes than arrived.

    libsndfile reads a WAV or AIFF cut mid-data silently (it just returns fewer frames), and a
    cut Ogg stream loses its length altogether, so this is checked on the raw bytes.
    """
    kind = sniff(data)
    if kind == "WAV" and data[:4] == b"RIFF":
        _check_iff_chunks(data, "<I", b"data", "WAV")
    elif kind == "AIFF":
        _check_iff_chunks(data, ">I", b"SSND", "AIFF")
    elif kind == "Ogg":
        _check_ogg_pages(data)


def _check_iff_chunks(data: bytes, size_format: str, data_id: bytes, kind: str) -> None:
    """Walk RIFF/IFF chunks after the 12-byte form header up to the audio data chunk."""
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack(size_format, data[offset + 4 : offset + 8])
        if chunk_id == data_id:
            available = len(data) - (offset + 8)
            if size != 0xFFFFFFFF and available < size:  # 0xFFFFFFFF: streamed, length unknown
                raise truncated(
                    kind, f"its header promises {size} bytes of audio but {available} arrived"
                )
            return
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    raise truncated(kind, "it ends before its audio data")


def _check_ogg_pages(data: bytes) -> None:
    """Walk Ogg pages: a cut stream ends inside a page or lacks the end-of-stream flag."""
    offset, flags = 0, 0
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS":
            return  # trailing bytes that are not a page: leave the judgement to the decoder
        segments = data[offset + 26] if offset + 27 <= len(data) else -1
        end = offset + 27 + segments
        if segments < 0 or end > len(data):
            raise truncated("Ogg", "it ends inside a page header")
        end += sum(data[offset + 27 : end])
        if end > len(data):
            raise truncated("Ogg", "it ends inside a page")
        flags, offset = data[offset + 5], end
    if not flags & 0x04:
        raise truncated("Ogg", "the stream has no end-of-stream page")


def too_long(seconds: float, max_seconds: float, *, at_least: bool = False) -> BadAudio:
    lasts = f"more than {seconds:g} s" if at_least else f"{seconds:.1f} s"
    return BadAudio(
        "too_long",
        f"the audio lasts {lasts} but the limit is {max_seconds:g} s; "
        f"trim it or split it into shorter clips",
    )


def length_slack(seconds: float) -> float:
    """How far a length estimated from bitrate and file size may miss (seconds)."""
    return max(0.25, 0.05 * seconds)


def ffmpeg_message(exc: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without errno noise."""
    return str(getattr(exc, "strerror", None) or exc)
