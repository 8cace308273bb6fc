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
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from lookaside.errors import BadAudio, ConfigError
from lookaside.resample import StreamResampler

if TYPE_CHECKING:
    import av

MIN_SAMPLE_RATE = 1_000
"""Lowest sample rate accepted (Hz); telephone audio is 8 kHz."""
MAX_SAMPLE_RATE = 384_000
"""Highest sample rate accepted (Hz); studio formats stop at 384 kHz."""
_BLOCK_SAMPLES = 1 << 18
"""Samples (all channels) decoded per read: 1 MiB of float32."""
_UNKNOWN_FRAMES = 1 << 62
"""libsndfile reports ``SF_COUNT_MAX`` frames for a FLAC stream that does not record its
length."""
_RESAMPLER_DELAY = 64
"""Frames a rate conversion may hold back and release with a later frame."""
SUPPORTED = (
    "upload WAV, FLAC, Ogg (Vorbis/Opus), MP3 or AAC/M4A audio, or a video with a sound track"
)


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
        raise _too_long(wave.shape[-1] / sample_rate, max_seconds)


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
    _check_declared_size(data)
    limits = _Limits(max_seconds, max_samples, mono, resample_to)
    try:
        wave, rate = _decode_soundfile(data, limits)
    except _NotForSoundfile as exc:
        wave, rate = _decode_pyav(data, limits, soundfile_error=str(exc))
    if wave.shape[1] == 0:
        raise BadAudio("empty", f"the file holds zero audio samples; {SUPPORTED}")
    check_values(wave, rate, max_seconds)
    return wave, rate


def downmix(wave: Tensor) -> Tensor:
    """``[C, N]`` float -> ``[N]`` channel mean (AST's recipe is mono).

    Summed channel by channel and divided once: element-wise operations only, so a waveform
    downmixed block by block while decoding equals the whole array downmixed, bit for bit (a
    reduction kernel's result depends on where its vectorised blocks fall). One channel is
    returned as a view.
    """
    if wave.dim() != 2 or wave.shape[0] == 0:
        raise BadAudio("unsupported", f"expected [channels, samples], got {tuple(wave.shape)}")
    if wave.shape[0] == 1:
        return wave[0]
    total = wave[0] + wave[1]
    for channel in wave[2:]:
        total.add_(channel)
    return total.div_(wave.shape[0])


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


@dataclass(frozen=True)
class _Limits:
    max_seconds: float
    max_samples: int | None
    mono: bool
    resample_to: int | None


class _Sink:
    """Decoded ``[C, n]`` float32 blocks -> one ``[C or 1, N]`` array, counted against the budget.

    Every block is counted before it is kept (channels x frames at the file's own rate) and the
    budget refusal comes as soon as it is passed. With ``expected`` frames (a header libsndfile
    reads exactly) the output is allocated once and filled; otherwise blocks are gathered and
    joined at the end. With ``resample_to``, downmixed blocks go through a stream resampler
    instead of being kept at the file's rate.
    """

    def __init__(self, limits: _Limits, channels: int, rate: int, expected: int | None) -> None:
        self.limits = limits
        self.channels = channels
        self.rate = rate
        self.counted = 0  # samples (channels x frames) decoded so far
        self.frames = 0
        rows = 1 if limits.mono else channels
        self._stream: StreamResampler | None = None
        self._buffer: np.ndarray | None = None
        if limits.resample_to is not None and limits.resample_to != rate:
            self._stream = StreamResampler(rate, limits.resample_to, expected=expected)
        elif expected:
            self._buffer = np.empty((rows, expected), np.float32)
        self._blocks: list[np.ndarray] = []

    def frames_allowed(self) -> int | None:
        """Frames the budget still allows (one more shows that it is passed), None: no budget."""
        if self.limits.max_samples is None:
            return None
        return max(0, (self.limits.max_samples - self.counted) // self.channels) + 1

    def reserve(self, samples: int) -> None:
        """Refuse before producing ``samples`` more samples that the budget cannot hold."""
        budget = self.limits.max_samples
        if budget is not None and self.counted + samples > budget:
            raise too_large(self.channels, self.rate, budget, budget, at_least=True)

    def add(self, block: np.ndarray) -> None:
        """Keep one ``[channels, n]`` float32 block (downmixed first where mono was asked)."""
        self.reserve(block.size)
        self.counted += block.size
        n = block.shape[1]
        if self.frames + n > self.limits.max_seconds * self.rate:
            raise _too_long(self.limits.max_seconds, self.limits.max_seconds, at_least=True)
        kept = np.ascontiguousarray(block, dtype=np.float32)
        if self.limits.mono:
            kept = downmix(torch.from_numpy(kept)).numpy()[None]
        if self._stream is not None:
            self._stream.feed(torch.from_numpy(kept[0]))
            self.frames += n
            return
        buffer = self._buffer
        if buffer is not None and not self._blocks and self.frames + n <= buffer.shape[1]:
            buffer[:, self.frames : self.frames + n] = kept
        else:
            self._blocks.append(kept)
        self.frames += n

    def result(self) -> tuple[Tensor, int]:
        """``([C or 1, frames]`` contiguous float32, its rate)."""
        if self._stream is not None:
            return self._stream.finish()[None], self._stream.target
        return torch.from_numpy(self._joined()), self.rate

    def _joined(self) -> np.ndarray:
        parts = list(self._blocks)
        if self._buffer is not None:
            filled = self.frames - sum(b.shape[1] for b in parts)
            parts.insert(0, self._buffer[:, :filled])
        if len(parts) == 1:
            return np.ascontiguousarray(parts[0])
        rows = 1 if self.limits.mono else self.channels
        if not parts:
            return np.zeros((rows, 0), np.float32)
        return np.concatenate(parts, axis=1)


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


def _check_header_budget(
    channels: int, rate: int, frames: float, limits: _Limits, *, at_least: bool = False
) -> None:
    """Refuse, before decoding, audio whose header already promises more than the budget."""
    budget = limits.max_samples
    if budget is not None and channels * frames > budget:
        raise too_large(channels, rate, int(channels * frames), budget, at_least=at_least)


def _decode_soundfile(data: bytes, limits: _Limits) -> tuple[Tensor, int]:
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
    slack = _length_slack(seconds) if info.format == "MP3" else 0.0
    if seconds - slack > limits.max_seconds:  # from the header: refuse before decoding
        raise _too_long(seconds, limits.max_seconds)
    _check_header_budget(channels, rate, frames - slack * rate, limits)
    sink = _Sink(limits, channels, rate, expected=frames if slack == 0.0 else None)
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
        raise _truncated(info.format, str(exc)) from exc
    if sink.frames < frames - slack * rate:
        raise _truncated(info.format, f"{sink.frames} of {frames} frames decoded")
    return sink.result()


def _ffmpeg_message(exc: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without errno noise."""
    return str(getattr(exc, "strerror", None) or exc)


def _undecodable(data: bytes, soundfile_error: str, detail: str) -> BadAudio:
    """A known container or libsndfile's "malformed" means a damaged file, else not audio."""
    kind = _sniff(data)
    if kind is not None or "malformed" in soundfile_error:
        return _truncated(kind or "audio", detail)
    return BadAudio("not_audio", f"the upload is not a recognised audio format; {SUPPORTED}")


def _decode_pyav(data: bytes, limits: _Limits, soundfile_error: str) -> tuple[Tensor, int]:
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
        _check_stream_header(stream, declared, limits)
        wave, rate = _decode_stream(container, stream, data, soundfile_error, limits)
    decoded = wave.shape[1] / rate
    if declared is not None and decoded < declared - _length_slack(declared):
        raise _truncated(
            _sniff(data) or container.format.name,
            f"{decoded:.2f} s decoded of the {declared:.2f} s it declares",
        )
    return wave, rate


def _check_stream_header(stream: av.AudioStream, declared: float | None, limits: _Limits) -> None:
    """Rate, length and decoded size from the container's header, before decoding.

    The decode loop checks each frame again: a header is a claim, not a fact.
    """
    rate = int(stream.codec_context.sample_rate or 0)
    channels = int(stream.codec_context.channels or 0)
    if rate:
        check_sample_rate(rate)
    if declared is None:
        return
    shortest = declared - _length_slack(declared)
    if shortest > limits.max_seconds:
        raise _too_long(declared, limits.max_seconds)
    if rate and channels:
        _check_header_budget(channels, rate, shortest * rate, limits)


def _planar(frame: av.AudioFrame, channels: int) -> np.ndarray:
    """``[channels, samples]`` view of a packed float frame's one plane."""
    return frame.to_ndarray().reshape(frame.samples, channels).T


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    data: bytes,
    soundfile_error: str,
    limits: _Limits,
) -> tuple[Tensor, int]:
    """Decode one audio stream frame by frame to float32 ``[C, N]`` (or ``[1, N]``).

    Layout and rate are the first frame's; a later frame at another rate or layout is converted
    to them, its output size counted against the budget before it is produced.
    """
    import av

    resampler: av.AudioResampler | None = None
    sink: _Sink | None = None
    try:
        for frame in container.decode(stream):
            check_sample_rate(frame.sample_rate)
            if resampler is None or sink is None:
                layout = frame.layout
                # packed float: PyAV 18 reads past the plane pointers of 8+ channel planar frames
                resampler = av.AudioResampler(format="flt", layout=layout, rate=frame.sample_rate)
                sink = _Sink(limits, layout.nb_channels, frame.sample_rate, expected=None)
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
            raise _undecodable(data, soundfile_error, _ffmpeg_message(exc)) from exc
        raise _truncated(_sniff(data) or container.format.name, _ffmpeg_message(exc)) from exc
    if sink is None or sink.frames == 0:
        raise BadAudio("empty", f"the file's audio track holds zero samples; {SUPPORTED}")
    return sink.result()
