"""Uploaded or stored bytes -> waveform, with a machine-readable reason for every refusal.

soundfile (libsndfile) reads WAV, FLAC, Ogg and AIFF; PyAV (FFmpeg) reads MP3, AAC, M4A and the
first audio track of video containers. Lengths are checked from headers before decoding wherever
the format records them, and truncation is detected from declared sizes, so a hostile or broken
upload is refused with :class:`~lookaside.errors.BadAudio` (``empty``, ``not_audio``,
``truncated``, ``too_long``, ``bad_values``, ``unsupported``) and a message that names the fix.
The service and the training datasets both decode through here.
"""

from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from lookaside.errors import BadAudio, ConfigError

if TYPE_CHECKING:
    import av

SUPPORTED = (
    "upload WAV, FLAC, Ogg (Vorbis/Opus), MP3 or AAC/M4A audio, or a video with a sound track"
)


def check_values(wave: Tensor, sample_rate: int, max_seconds: float) -> None:
    """Refuse empty, non-finite or over-long audio (decoded here or handed to ``extract``)."""
    if wave.numel() == 0:
        raise BadAudio("empty", f"the audio has no samples; {SUPPORTED}")
    if wave.is_floating_point() and not bool(torch.isfinite(wave).all()):
        raise BadAudio(
            "bad_values",
            "the audio contains NaN or infinite samples; re-export it as PCM WAV or FLAC",
        )
    if wave.shape[-1] / sample_rate > max_seconds:
        raise _too_long(wave.shape[-1] / sample_rate, max_seconds)


def decode_audio(data: bytes, *, max_seconds: float = 600.0) -> tuple[Tensor, int]:
    """Uploaded bytes -> (``[channels, samples]`` float32, sample rate).

    soundfile (libsndfile) reads WAV, FLAC, Ogg and AIFF; anything else goes through PyAV
    (FFmpeg): MP3, AAC, M4A and the first audio track of video containers. Raises
    :class:`BadAudio` whose ``reason`` is ``empty``, ``not_audio``, ``truncated``, ``too_long``
    or ``unsupported``; the message names the fix. The length is checked from the header before
    decoding wherever the format records it.
    """
    if max_seconds <= 0:
        raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
    if not data:
        raise BadAudio("empty", f"the upload is empty; {SUPPORTED}")
    _check_declared_size(data)
    try:
        wave, rate = _decode_soundfile(data, max_seconds)
    except _NotForSoundfile as exc:
        wave, rate = _decode_pyav(data, max_seconds, soundfile_error=str(exc))
    if wave.shape[1] == 0:
        raise BadAudio("empty", f"the file holds zero audio samples; {SUPPORTED}")
    check_values(wave, rate, max_seconds)
    return wave, rate


class _NotForSoundfile(Exception):
    """libsndfile cannot open the bytes: let FFmpeg try."""


class _Bytes(io.BytesIO):
    """``BytesIO`` for libsndfile's virtual IO.

    libsndfile's format probes seek before the start of short inputs; ``BytesIO`` raises on that,
    and cffi prints the exception from its callback instead of propagating it. Clamp to 0 instead.
    """

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_SET and offset < 0:
            offset = 0
        return super().seek(offset, whence)


def _sniff(data: bytes) -> str | None:
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


def _truncated(kind: str, detail: str) -> BadAudio:
    return BadAudio(
        "truncated", f"the {kind} file is truncated or damaged ({detail}); upload the complete file"
    )


def _check_declared_size(data: bytes) -> None:
    """Refuse files whose own header promises more bytes than arrived.

    libsndfile reads a WAV or AIFF cut mid-data silently (it just returns fewer frames), and a
    cut Ogg stream loses its length altogether, so this is checked on the raw bytes.
    """
    kind = _sniff(data)
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
                raise _truncated(
                    kind, f"its header promises {size} bytes of audio but {available} arrived"
                )
            return
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    raise _truncated(kind, "it ends before its audio data")


def _check_ogg_pages(data: bytes) -> None:
    """Walk Ogg pages: a cut stream ends inside a page or lacks the end-of-stream flag."""
    offset, flags = 0, 0
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS":
            return  # trailing bytes that are not a page: leave the judgement to the decoder
        segments = data[offset + 26] if offset + 27 <= len(data) else -1
        end = offset + 27 + segments
        if segments < 0 or end > len(data):
            raise _truncated("Ogg", "it ends inside a page header")
        end += sum(data[offset + 27 : end])
        if end > len(data):
            raise _truncated("Ogg", "it ends inside a page")
        flags, offset = data[offset + 5], end
    if not flags & 0x04:
        raise _truncated("Ogg", "the stream has no end-of-stream page")


def _too_long(seconds: float, max_seconds: float, *, at_least: bool = False) -> BadAudio:
    lasts = f"more than {seconds:g} s" if at_least else f"{seconds:.1f} s"
    return BadAudio(
        "too_long",
        f"the audio lasts {lasts} but the limit is {max_seconds:g} s; "
        f"trim it or split it into shorter clips",
    )


def _length_slack(seconds: float) -> float:
    """How far a length estimated from bitrate and file size may miss (seconds)."""
    return max(0.25, 0.05 * seconds)


def _decode_soundfile(data: bytes, max_seconds: float) -> tuple[Tensor, int]:
    try:
        info = sf.info(_Bytes(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _NotForSoundfile(str(exc)) from exc
    if info.samplerate <= 0:
        raise _NotForSoundfile(f"libsndfile reports sample rate {info.samplerate}")
    seconds = info.frames / info.samplerate
    # MPEG streams without a Xing/Info header only have a length estimated from the bitrate.
    slack = _length_slack(seconds) if info.format == "MP3" else 0.0
    if seconds - slack > max_seconds:  # from the header: refuse before decoding
        raise _too_long(seconds, max_seconds)
    try:
        array, rate = sf.read(_Bytes(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _truncated(info.format, str(exc)) from exc
    if array.shape[0] < info.frames - slack * info.samplerate:
        raise _truncated(info.format, f"{array.shape[0]} of {info.frames} frames decoded")
    return torch.from_numpy(np.ascontiguousarray(array.T)), int(rate)


def _ffmpeg_message(exc: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without errno noise."""
    return str(getattr(exc, "strerror", None) or exc)


def _undecodable(data: bytes, soundfile_error: str, detail: str) -> BadAudio:
    """A known container or libsndfile's "malformed" means a damaged file, else not audio."""
    kind = _sniff(data)
    if kind is not None or "malformed" in soundfile_error:
        return _truncated(kind or "audio", detail)
    return BadAudio("not_audio", f"the upload is not a recognised audio format; {SUPPORTED}")


def _decode_pyav(data: bytes, max_seconds: float, soundfile_error: str) -> tuple[Tensor, int]:
    import av  # FFmpeg bindings: imported lazily, only formats libsndfile cannot read need them

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _undecodable(data, soundfile_error, _ffmpeg_message(exc)) from exc
    with container:
        if not container.streams.audio:
            raise BadAudio("not_audio", f"the file has no audio track; {SUPPORTED}")
        stream = container.streams.audio[0]
        declared: float | None = None  # seconds, where the container records them
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            declared = container.duration / 1e6
        if declared is not None and declared - _length_slack(declared) > max_seconds:
            raise _too_long(declared, max_seconds)  # before decoding; the decode loop is exact
        array, rate = _decode_stream(container, stream, data, soundfile_error, max_seconds)
    decoded = array.shape[1] / rate
    if declared is not None and decoded < declared - _length_slack(declared):
        raise _truncated(
            _sniff(data) or container.format.name,
            f"{decoded:.2f} s decoded of the {declared:.2f} s it declares",
        )
    return torch.from_numpy(array), rate


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    data: bytes,
    soundfile_error: str,
    max_seconds: float,
) -> tuple[np.ndarray, int]:
    """Decode one audio stream to planar float32 ``[C, N]`` at its first frame's rate."""
    import av

    resampler = av.AudioResampler(format="fltp")  # layout and rate follow the first frame
    chunks: list[np.ndarray] = []
    total, rate = 0, 0
    try:
        for frame in container.decode(stream):
            rate = rate or frame.sample_rate
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                total += out.samples
            if rate and total > max_seconds * rate:
                raise _too_long(max_seconds, max_seconds, at_least=True)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    except av.error.DecoderNotFoundError as exc:
        raise BadAudio(
            "unsupported", f"the file's audio codec is not supported; {SUPPORTED}"
        ) from exc
    except av.error.FFmpegError as exc:
        if not chunks:
            raise _undecodable(data, soundfile_error, _ffmpeg_message(exc)) from exc
        raise _truncated(_sniff(data) or container.format.name, _ffmpeg_message(exc)) from exc
    if not chunks or rate <= 0:
        raise BadAudio("empty", f"the file's audio track holds zero samples; {SUPPORTED}")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), rate
