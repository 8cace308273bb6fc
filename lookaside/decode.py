"""Uploaded or stored bytes -> waveform, with a machine-readable reason for every refusal.

soundfile (libsndfile) reads WAV, FLAC, Ogg and AIFF; PyAV (FFmpeg) reads MP3, AAC, M4A and the
first audio track of video containers. Lengths, rates and decoded sizes (channels x frames,
against an optional budget of decoded samples) are checked from headers before decoding wherever
the format records them; decoding then runs block by block (libsndfile reads, FFmpeg frames),
counting what it decodes, so a header that lies or omits its length cannot make it hold more than
the budget; blocks can be downmixed and resampled as they arrive. Truncation is detected from
declared sizes. A hostile or broken upload is refused with :class:`~lookaside.errors.BadAudio`
(``empty``, ``not_audio``, ``truncated``, ``too_long``, ``too_large``, ``bad_rate``,
``bad_values``, ``unsupported``) and a message that names the fix. The service and the training
datasets both decode through here.

Modules: this one decodes (libsndfile, then FFmpeg); :mod:`lookaside.decode_probe` checks what
the bytes claim before decoding and builds the refusals; :mod:`lookaside.decode_sink` gathers
decoded blocks under the budget. Decoding runs on the caller's thread (the service's featurize
pool, a dataset worker) and keeps no state between calls.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from lookaside.decode_probe import (
    SUPPORTED,
    check_declared_size,
    check_sample_rate,
    ffmpeg_message,
    length_slack,
    sniff,
    too_long,
    truncated,
)
from lookaside.decode_sink import DecodeLimits, Sink, check_header_budget, downmix
from lookaside.errors import BadAudio, ConfigError

if TYPE_CHECKING:
    import av

__all__ = ["check_sample_rate", "check_values", "decode_audio", "downmix"]

_BLOCK_SAMPLES = 1 << 18
"""Samples (all channels) decoded per read: 1 MiB of float32."""
_UNKNOWN_FRAMES = 1 << 62
"""libsndfile reports ``SF_COUNT_MAX`` frames for a FLAC stream that does not record its
length."""
_RESAMPLER_DELAY = 64
"""Frames a rate conversion may hold back and release with a later frame."""


def check_values(wave: Tensor, sample_rate: int, max_seconds: float) -> None:
    """Refuse empty, non-finite or over-long audio (decoded here or handed to ``extract``)."""
    if wave.numel() == 0:
        raise BadAudio("empty", f"the audio has no samples; {SUPPORTED}")
    if wave.is_floating_point() and not _all_finite(wave):
        raise BadAudio(
            "bad_values",
            "the audio contains NaN or infinite samples; re-export it as PCM WAV or FLAC",
        )
    if wave.shape[-1] / sample_rate > max_seconds:
        raise too_long(wave.shape[-1] / sample_rate, max_seconds)


def _all_finite(wave: Tensor) -> bool:
    """``isfinite(wave).all()`` a block of samples at a time: ``torch.isfinite`` makes a float
    copy of its whole input (``abs``) besides its boolean result."""
    step = max(1, _BLOCK_SAMPLES // max(1, wave[..., :1].numel()))
    return all(
        bool(torch.isfinite(wave[..., i : i + step]).all()) for i in range(0, wave.shape[-1], step)
    )


def decode_audio(
    data: bytes,
    *,
    max_seconds: float = 600.0,
    max_samples: int | None = None,
    mono: bool = False,
    resample_to: int | None = None,
) -> tuple[Tensor, int]:
    """Uploaded bytes -> (``[channels, samples]`` float32, sample rate).

    soundfile (libsndfile) reads WAV, FLAC, Ogg and AIFF; anything else goes through PyAV
    (FFmpeg): MP3, AAC, M4A and the first audio track of video containers. The audio is decoded
    in blocks, so what is held is bounded by what is kept, never by what a header claims.

    Args:
        data: the file's bytes.
        max_seconds: longest audio accepted (``too_long``).
        max_samples: budget of decoded samples (channels x frames at the file's own rate):
            checked from the header before decoding and counted block by block while decoding, so
            a header that lies (no length, a wrong one) cannot make it decode more (``too_large``).
            None: no budget (datasets on local disk).
        mono: downmix each block as it arrives (:func:`downmix`, the channel mean) and return
            ``[1, samples]``: what is held is frames, not channels x frames.
        resample_to: with ``mono``, resample the downmixed blocks to this rate as they arrive
            (:class:`~lookaside.resample.StreamResampler`, equal bit for bit to resampling the
            whole waveform), so the waveform at the file's own rate is never held; the rate
            returned is then this one.

    Raises:
        BadAudio: ``reason`` is ``empty``, ``not_audio``, ``truncated``, ``too_long``,
            ``too_large``, ``bad_rate`` (a sample rate no real recording has) or
            ``unsupported``; the message names the fix.
    """
    if max_seconds <= 0:
        raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
    if max_samples is not None and max_samples <= 0:
        raise ConfigError(f"max_samples must be positive, got {max_samples}")
    if resample_to is not None and not (mono and resample_to > 0):
        raise ConfigError(f"resample_to needs mono=True and a positive rate, got {resample_to}")
    if not data:
        raise BadAudio("empty", f"the upload is empty; {SUPPORTED}")
    check_declared_size(data)
    limits = DecodeLimits(max_seconds, max_samples, mono, resample_to)
    try:
        wave, rate = _decode_soundfile(data, limits)
    except _NotForSoundfile as exc:
        wave, rate = _decode_pyav(data, limits, soundfile_error=str(exc))
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


def _decode_soundfile(data: bytes, limits: DecodeLimits) -> tuple[Tensor, int]:
    try:
        info = sf.info(_Bytes(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _NotForSoundfile(str(exc)) from exc
    if info.samplerate <= 0 or info.channels <= 0:
        raise _NotForSoundfile(
            f"libsndfile reports {info.channels} channels at {info.samplerate} Hz"
        )
    rate, channels = int(info.samplerate), int(info.channels)
    check_sample_rate(rate)
    if not 0 <= info.frames < _UNKNOWN_FRAMES:
        # A FLAC stream that does not record its length: libsndfile fails at its end, FFmpeg
        # reads it, frame by frame under the same budget.
        raise _NotForSoundfile("libsndfile does not know the stream's length")
    frames = int(info.frames)
    seconds = frames / rate
    # MPEG streams without a Xing/Info header only have a length estimated from the bitrate.
    slack = length_slack(seconds) if info.format == "MP3" else 0.0
    if seconds - slack > limits.max_seconds:  # from the header: refuse before decoding
        raise too_long(seconds, limits.max_seconds)
    check_header_budget(channels, rate, frames - slack * rate, limits)
    sink = Sink(limits, channels, rate, expected=frames if slack == 0.0 else None)
    try:
        with sf.SoundFile(_Bytes(data)) as f:
            if f.seekable():  # as sf.read does: libmpg123 decodes a file read after a seek
                f.seek(0)  # differently in the last bit
            while True:
                want = _BLOCK_SAMPLES // channels + 1
                allowed = sink.frames_allowed()
                block = f.read(
                    frames=want if allowed is None else min(want, allowed),
                    dtype="float32",
                    always_2d=True,
                )
                if block.shape[0] == 0:
                    break
                sink.add(block.T)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise truncated(info.format, str(exc)) from exc
    if sink.frames < frames - slack * rate:
        raise truncated(info.format, f"{sink.frames} of {frames} frames decoded")
    return sink.result()


def _undecodable(data: bytes, soundfile_error: str, detail: str) -> BadAudio:
    """A known container or libsndfile's "malformed" means a damaged file, else not audio."""
    kind = sniff(data)
    if kind is not None or "malformed" in soundfile_error:
        return truncated(kind or "audio", detail)
    return BadAudio("not_audio", f"the upload is not a recognised audio format; {SUPPORTED}")


def _decode_pyav(data: bytes, limits: DecodeLimits, soundfile_error: str) -> tuple[Tensor, int]:
    import av  # FFmpeg bindings: imported lazily, only formats libsndfile cannot read need them

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _undecodable(data, soundfile_error, ffmpeg_message(exc)) from exc
    with container:
        if not container.streams.audio:
            raise BadAudio("not_audio", f"the file has no audio track; {SUPPORTED}")
        stream = container.streams.audio[0]
        declared: float | None = None  # seconds, where the container records them
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            declared = container.duration / 1e6
        _check_stream_header(stream, declared, limits)
        wave, rate = _decode_stream(container, stream, data, soundfile_error, limits)
    decoded = wave.shape[1] / rate
    if declared is not None and decoded < declared - length_slack(declared):
        raise truncated(
            sniff(data) or container.format.name,
            f"{decoded:.2f} s decoded of the {declared:.2f} s it declares",
        )
    return wave, rate


def _check_stream_header(
    stream: av.AudioStream, declared: float | None, limits: DecodeLimits
) -> None:
    """Rate, length and decoded size from the container's header, before decoding.

    The decode loop checks each frame again: a header is a claim, not a fact.
    """
    rate = int(stream.codec_context.sample_rate or 0)
    channels = int(stream.codec_context.channels or 0)
    if rate:
        check_sample_rate(rate)
    if declared is None:
        return
    shortest = declared - length_slack(declared)
    if shortest > limits.max_seconds:
        raise too_long(declared, limits.max_seconds)
    if rate and channels:
        check_header_budget(channels, rate, shortest * rate, limits)


def _planar(frame: av.AudioFrame, channels: int) -> np.ndarray:
    """``[channels, samples]`` view of a packed float frame's one plane."""
    return frame.to_ndarray().reshape(frame.samples, channels).T


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    data: bytes,
    soundfile_error: str,
    limits: DecodeLimits,
) -> tuple[Tensor, int]:
    """Decode one audio stream frame by frame to float32 ``[C, N]`` (or ``[1, N]``).

    Layout and rate are the first frame's; a later frame at another rate or layout is converted
    to them, its output size counted against the budget before it is produced.
    """
    import av

    resampler: av.AudioResampler | None = None
    sink: Sink | None = None
    try:
        for frame in container.decode(stream):
            check_sample_rate(frame.sample_rate)
            if resampler is None or sink is None:
                layout = frame.layout
                # packed float: PyAV 18 reads past the plane pointers of 8+ channel planar frames
                resampler = av.AudioResampler(format="flt", layout=layout, rate=frame.sample_rate)
                sink = Sink(limits, layout.nb_channels, frame.sample_rate, expected=None)
            out_frames = -(-frame.samples * sink.rate // frame.sample_rate)  # ceil
            if frame.sample_rate != sink.rate:
                out_frames += _RESAMPLER_DELAY
            sink.reserve(out_frames * sink.channels)
            for out in resampler.resample(frame):
                sink.add(_planar(out, sink.channels))
        if resampler is not None and sink is not None:
            for out in resampler.resample(None):
                sink.add(_planar(out, sink.channels))
    except av.error.DecoderNotFoundError as exc:
        raise BadAudio(
            "unsupported", f"the file's audio codec is not supported; {SUPPORTED}"
        ) from exc
    except av.error.FFmpegError as exc:
        if sink is None or sink.frames == 0:
            raise _undecodable(data, soundfile_error, ffmpeg_message(exc)) from exc
        raise truncated(sniff(data) or container.format.name, ffmpeg_message(exc)) from exc
    if sink is None or sink.frames == 0:
        raise BadAudio("empty", f"the file's audio track holds zero samples; {SUPPORTED}")
    return sink.result()
