"""WorkloadConfig, WorkloadRequest and the registry of workload generators."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# width x height of each resolution preset
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "360p": (640, 360),
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "1440p": (2560, 1440),
    "4k": (3840, 2160),
}
IMAGE_FORMATS = ("jpeg", "png")
AUDIO_FORMATS = ("wav", "flac", "mp3")
MODALITIES = ("image", "video", "audio")  # keys of `mix`, in the order a request lists its parts
MAX_SIDE = 16384

# name -> "module:function" (imported on first use) or the function itself
_WORKLOADS: dict[str, str | Callable[..., list[WorkloadRequest]]] = {
    "random_image": "epd.workload.random_image:build",
    "random_video": "epd.workload.random_video:build",
    "random_audio": "epd.workload.random_audio:build",
    "mixed": "epd.workload.mixed:build",
    "file": "epd.workload.file:build",
}
# which count key says how many media items a single-modality generator puts in a request
_COUNT_KEYS = {"random_image": "image_count", "random_video": "video_count", "random_audio": "audio_count"}


@dataclass(kw_only=True)
class WorkloadConfig:
    """What requests a run sends and when. Fields a generator does not use are ignored."""

    name: str = "random_image"
    """Generator registry key: "random_image", "random_video", "random_audio", "mixed" or "file"
    (see `register_workload`)."""
    num_requests: int = 8
    """Measured requests (of each phase, with `phase_rates`). For "file", 0 means every line of the
    file; otherwise at most this many."""
    request_rate: float = math.inf
    """Mean arrival rate in requests/s of arrival=poisson and gamma; inf = all at t=0."""
    arrival: str = "poisson"
    """How measured requests arrive (`epd.workload.arrivals`): "poisson" (exponential gaps at
    `request_rate`), "gamma" (gamma gaps at `request_rate` with shape `burstiness`), "concurrency"
    (a closed loop: `concurrency` requests in flight, the next sent when one ends) or "trace"
    (the offsets of the timestamps in `trace_path`)."""
    burstiness: float = 1.0
    """arrival=gamma: shape of the inter-arrival gaps: 1 = Poisson, < 1 burstier, > 1 more regular."""
    concurrency: int = 0
    """Requests in flight: exactly this many with arrival=concurrency; with the other arrival
    processes a cap (a due request waits for a free slot and its latency counts from when it is
    sent); 0 = no cap."""
    trace_path: str | None = None
    """arrival=trace: a file of arrival times in seconds, one a line (plain numbers, a CSV whose header
    names a `timestamp`/`arrival_s`/`time` column, or JSONL objects with one of those keys); shifted so
    the first is 0. The earliest `num_requests` are used."""
    trace_speed: float = 1.0
    """arrival=trace: replay speed, 2 = twice as fast (offsets are divided by it)."""
    phase_rates: list[float] = field(default_factory=list)
    """Several loads in one job (the ranks start once): one phase per rate, played in order, each
    starting when the previous one has drained; the summary gets one entry per phase
    (`summary["phases"]`). Empty = one phase at `request_rate`. Not with arrival=concurrency or trace."""
    phase_requests: list[int] = field(default_factory=list)
    """Measured requests of each phase (same length as `phase_rates`); empty = `num_requests` each."""
    slo_ttft_ms: float | None = None
    """Service-level objective on time to first token (ms): goodput counts requests within it."""
    slo_tpot_ms: float | None = None
    """Service-level objective on time per output token (ms): goodput counts requests within it."""
    seed: int = 0
    """Seeds every random choice: arrivals, prompt words, media content and mixed's modalities."""
    image_count: int = 1
    """random_image, mixed: images per request (0 = text-only requests)."""
    resolution: str = "360p"
    """random_image, random_video, mixed: size of images and videos, a preset
    (360p 480p 720p 1080p 1440p 4k) or "WxH", e.g. "1024x768"."""
    image_format: str = "jpeg"
    """random_image: how the generated files are encoded: "jpeg" (quality 90, ~25 ms per 1080p image
    per core) or "png" (~10x slower to make, ~5 MB at 1080p)."""
    num_distinct_images: int = 0
    """random_image: 0 = every image is distinct (no embedding-cache hits); N > 0 = images are
    drawn round-robin from a pool of N, so the hit rate of a content cache is known."""
    video_count: int = 1
    """random_video, mixed: videos per request (0 = text-only requests)."""
    video_seconds: float = 4.0
    """random_video, mixed: length of each video in seconds (mp4, H.264 at `resolution`)."""
    video_fps: float = 30.0
    """random_video, mixed: frame rate the videos are encoded at; the encoder samples its own
    rate from them (media.video_fps), so this sets decode work, not the frames the model sees."""
    video_with_audio: bool = False
    """random_video, mixed: give each video an AAC audio track (44.1 kHz mono), e.g. for
    Qwen3-Omni's audio-in-video."""
    audio_count: int = 1
    """random_audio, mixed: audio clips per request (0 = text-only requests)."""
    random_count: bool = False
    """Synthetic workloads: each request carries a random number of items, drawn uniformly from 1 to
    image_count (video_count, audio_count) and seeded per request; false = exactly that many."""
    audio_seconds: float = 10.0
    """random_audio, mixed: length of each clip in seconds (16 kHz mono)."""
    audio_format: str = "wav"
    """random_audio, mixed: how clips are encoded: "wav" (16-bit PCM), "flac" or "mp3"."""
    mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 1.0))
    """mixed: weight of each modality (image, video, audio), e.g. {image: 0.5, video: 0.25, audio:
    0.25}; weights are normalized, so probabilities and counts both work; a missing or 0 weight
    drops a modality. Default: all three equally likely. A Hydra override merges into this, so
    `workload.mix={image:1,video:1}` keeps audio's weight: drop it with `workload.mix.audio=0`."""
    mix_per_request: int = 1
    """mixed: distinct modalities per request, drawn by weight without replacement; each brings its
    own count (image_count, video_count, audio_count). 1 = single-modality requests whose
    modality follows `mix`; the number of weighted modalities = every request carries all."""
    input_len: int = 32
    """Synthetic workloads: text tokens per request; exact with a tokenizer, else ~1 token per word."""
    output_len: int = 16
    """max_tokens of generated requests; default max_tokens of file lines that omit it."""
    ignore_eos: bool = True
    """Keep generating past EOS so every request emits max_tokens (fixed output length)."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy); default for file lines that omit it."""
    path: str | None = None
    """file: a JSONL file, one OpenAI chat-completions request body per line."""
    warmup_requests: int = 0
    """Extra requests sent before the measured ones, flagged `warmup` and left out of the
    summary. Synthetic workloads make them with their own media; file takes the first lines."""

    def __post_init__(self) -> None:
        if self.name not in _WORKLOADS:
            raise ValueError(
                f"workload.name={self.name!r} is not a registered workload; choose one of {sorted(_WORKLOADS)}"
            )
        if self.num_requests < 0 or (self.num_requests == 0 and self.name != "file"):
            raise ValueError(
                f"workload.num_requests={self.num_requests}: set it to 1 or more "
                "(0 = whole file is allowed only for workload.name=file)"
            )
        if math.isnan(self.request_rate) or self.request_rate <= 0:
            raise ValueError(
                f"workload.request_rate={self.request_rate}: set a rate > 0 in requests/s, "
                "or inf to send every request at t=0"
            )
        self._check_arrival()
        if self.seed < 0:
            raise ValueError(f"workload.seed={self.seed}: set it to 0 or more")
        for key in ("image_count", "video_count", "audio_count", "input_len", "warmup_requests", "num_distinct_images"):
            if getattr(self, key) < 0:
                raise ValueError(f"workload.{key}={getattr(self, key)}: set it to 0 or more")
        if self.output_len < 1:
            raise ValueError(f"workload.output_len={self.output_len}: set it to 1 or more")
        if not self.temperature >= 0:
            raise ValueError(f"workload.temperature={self.temperature}: set it to 0 (greedy) or more")
        if self.image_format == "jpg":
            self.image_format = "jpeg"
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"workload.image_format={self.image_format!r}: choose one of {IMAGE_FORMATS}")
        parse_resolution(self.resolution)
        self._check_video_audio()
        self._check_mix()
        count_key = _COUNT_KEYS.get(self.name)
        if count_key is not None and getattr(self, count_key) == 0 and self.input_len == 0:
            raise ValueError(f"workload.{count_key} and workload.input_len are both 0: set one to 1 or more")
        if self.name == "file" and not self.path:
            raise ValueError("workload.name=file needs workload.path=<a JSONL file of request bodies>")

    def _check_arrival(self) -> None:
        from epd.workload.arrivals import ARRIVALS

        if self.arrival not in ARRIVALS:
            raise ValueError(f"workload.arrival={self.arrival!r}: choose one of {list(ARRIVALS)}")
        if not self.burstiness > 0 or math.isinf(self.burstiness):
            raise ValueError(f"workload.burstiness={self.burstiness}: set a finite value > 0")
        if self.burstiness != 1.0 and self.arrival != "gamma":
            raise ValueError(
                f"workload.burstiness={self.burstiness} shapes gamma arrivals: add workload.arrival=gamma "
                f"(arrival={self.arrival!r} ignores it)"
            )
        if self.concurrency < 0 or (self.arrival == "concurrency" and self.concurrency == 0):
            raise ValueError(
                f"workload.concurrency={self.concurrency}: set the number of requests in flight (>= 1 with "
                "workload.arrival=concurrency; 0 = no cap otherwise)"
            )
        if self.arrival in ("concurrency", "trace") and not math.isinf(self.request_rate):
            raise ValueError(
                f"workload.request_rate={self.request_rate} is not used by workload.arrival={self.arrival}: drop it "
                "(for a rate with a cap on requests in flight, use arrival=poisson with workload.concurrency=N)"
            )
        if self.arrival == "trace" and not self.trace_path:
            raise ValueError("workload.arrival=trace needs workload.trace_path=<a file of arrival times>")
        if self.trace_path:
            self.trace_path = str(Path(self.trace_path).expanduser().absolute())  # every process reads the same file
            if not Path(self.trace_path).is_file():
                raise ValueError(f"workload.trace_path={self.trace_path!r}: no such file")
        if not 0 < self.trace_speed < math.inf:
            raise ValueError(f"workload.trace_speed={self.trace_speed}: set a finite value > 0")
        for key in ("slo_ttft_ms", "slo_tpot_ms"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"workload.{key}={value}: set a latency > 0 in ms, or null for no SLO")
        self._check_phases()

    def _check_phases(self) -> None:
        if not self.phase_rates:
            if self.phase_requests:
                raise ValueError("workload.phase_requests needs workload.phase_rates (one rate per phase)")
            return
        if self.arrival in ("concurrency", "trace"):
            raise ValueError(f"workload.phase_rates sets request rates, which arrival={self.arrival!r} does not use")
        for rate in self.phase_rates:
            if math.isnan(rate) or rate <= 0:
                raise ValueError(f"workload.phase_rates={self.phase_rates}: every rate must be > 0 (or inf)")
        if self.phase_requests and len(self.phase_requests) != len(self.phase_rates):
            raise ValueError(
                f"workload.phase_requests={self.phase_requests} needs one count per rate of "
                f"workload.phase_rates={self.phase_rates}"
            )
        if any(n < 1 for n in self.phase_requests):
            raise ValueError(f"workload.phase_requests={self.phase_requests}: every phase needs 1 request or more")
        if self.name == "file":
            raise ValueError("workload.phase_rates is for synthetic workloads; a file workload plays its lines once")

    @property
    def requests_per_phase(self) -> list[int]:
        """Measured requests of each phase (one phase when `phase_rates` is empty)."""
        if not self.phase_rates:
            return [self.num_requests]
        return list(self.phase_requests) or [self.num_requests] * len(self.phase_rates)

    @property
    def total_requests(self) -> int:
        """Measured requests of the whole run, over every phase."""
        return sum(self.requests_per_phase)

    def _check_video_audio(self) -> None:
        for key in ("video_seconds", "video_fps", "audio_seconds"):
            value = getattr(self, key)
            if not 0 < value < math.inf:
                raise ValueError(f"workload.{key}={value}: set a finite value > 0")
        if round(self.video_seconds * self.video_fps) < 1:
            raise ValueError(
                f"workload.video_seconds={self.video_seconds} at workload.video_fps={self.video_fps} "
                "is less than one frame: raise either"
            )
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"workload.audio_format={self.audio_format!r}: choose one of {AUDIO_FORMATS}")

    def _check_mix(self) -> None:
        unknown = sorted(set(self.mix) - set(MODALITIES))
        if unknown:
            raise ValueError(f"workload.mix has unknown modality {unknown[0]!r}: use keys from {MODALITIES}")
        for modality, weight in self.mix.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
                raise ValueError(f"workload.mix.{modality}={weight!r}: set a finite weight >= 0")
        if sum(self.mix.values()) == 0:
            raise ValueError("workload.mix: every weight is 0; give at least one modality a weight > 0")
        weighted = [modality for modality, p in self.mix_probabilities.items() if p > 0]
        if not 1 <= self.mix_per_request <= len(weighted):
            raise ValueError(
                f"workload.mix_per_request={self.mix_per_request}: set it from 1 to the number of "
                f"modalities with a weight > 0 in workload.mix ({len(weighted)}: {', '.join(weighted)})"
            )
        if self.name == "mixed":
            for modality in weighted:
                if getattr(self, f"{modality}_count") == 0:
                    raise ValueError(
                        f"workload.{modality}_count=0, but workload.mix gives {modality} a weight > 0, so "
                        f"requests drawn as {modality} would carry none: set it to 1 or more, or "
                        f"workload.mix.{modality}=0"
                    )

    @property
    def mix_probabilities(self) -> dict[str, float]:
        """Probability of each modality, in `MODALITIES` order: `mix` normalized."""
        weights = {modality: float(self.mix.get(modality, 0.0)) for modality in MODALITIES}
        total = sum(weights.values())
        return {modality: weight / total for modality, weight in weights.items()}

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels of `resolution`."""
        return parse_resolution(self.resolution)


def parse_resolution(resolution: str) -> tuple[int, int]:
    """(width, height) of a preset name ("1080p") or a "WxH" string."""
    key = resolution.strip().lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    match = re.fullmatch(r"(\d+)x(\d+)", key)
    if match is None or not all(1 <= int(side) <= MAX_SIDE for side in match.groups()):
        raise ValueError(
            f"workload.resolution={resolution!r}: use a preset {list(RESOLUTIONS)} "
            f'or "WxH" with sides from 1 to {MAX_SIDE}, e.g. "1024x768"'
        )
    return int(match[1]), int(match[2])


@dataclass(kw_only=True)
class WorkloadRequest:
    """One request of a run, in OpenAI chat-completions terms.

    `messages` are OpenAI chat messages: {"role", "content"} where content is a string or a list
    of parts {"type": "text", "text": ...} and {"type": T, T: {"url": ...}} for T in image_url,
    video_url, audio_url; urls are absolute local paths, file:// URLs, http(s) URLs or data: URIs. `arrival_s` is the offset at which
    the driver sends the request, from the start of its phase (`phase`); warmup requests have
    arrival 0 and are meant to be sent (and finished) before the measured phases start.
    """

    id: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float = 0.0
    ignore_eos: bool = False
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    """Strings that end the request (OpenAI ``stop``); the output text ends before the first one."""
    prompt: str | None = None
    """A text completion's prompt (OpenAI ``/v1/completions``), tokenized as it is: no chat template,
    and ``messages`` is empty."""
    arrival_s: float = 0.0
    warmup: bool = False
    phase: int = 0
    """Index of the load phase the request belongs to (`WorkloadConfig.phase_rates`); 0 with one phase."""
    error: str | None = None
    """Why the request was refused when it was read (e.g. `requests.jsonl:7: max_tokens=0: ...`): it is
    recorded as failed with this error at its arrival, and nothing is sent for it."""


def save_requests(path: Path, requests: list[WorkloadRequest]) -> None:
    """Write ``requests`` as JSON lines (the run's inputs, ``workload.jsonl`` in the run directory)."""
    import msgspec

    encoder = msgspec.json.Encoder()
    tmp = Path(path).with_suffix(".tmp")
    with tmp.open("wb") as f:
        for request in requests:
            f.write(encoder.encode(request) + b"\n")
    tmp.replace(path)


def load_requests(path: Path) -> list[WorkloadRequest]:
    """The requests ``save_requests`` wrote, in the same order."""
    import msgspec

    decoder = msgspec.json.Decoder(WorkloadRequest)
    with Path(path).open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


WorkloadBuilder = Callable[[WorkloadConfig, Path, Any], list[WorkloadRequest]]


def register_workload(name: str, builder: str | WorkloadBuilder) -> None:
    """Register a generator `builder(cfg, media_dir, tokenizer) -> list[WorkloadRequest]`,
    given as the function or as "module:function" (imported on first use)."""
    _WORKLOADS[name] = builder


def build_workload(
    cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None, write_media: bool = True
) -> list[WorkloadRequest]:
    """Build every request of a run: warmup requests first, then measured ones in arrival order.

    Generated media are written into `media_dir` (created if missing). `tokenizer` (a
    `transformers` tokenizer or a `tokenizers.Tokenizer`) makes text lengths exact.
    `write_media=False` writes nothing: synthetic media parts keep their would-be paths and carry
    their size as hints beside the url (width, height, seconds), which is all the simulator needs.
    """
    from epd.workload.media import sizes_only

    builder = _WORKLOADS[cfg.name]
    if isinstance(builder, str):
        module_name, _, attr = builder.partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        _WORKLOADS[cfg.name] = builder
    media_dir = Path(media_dir)
    if write_media:
        media_dir.mkdir(parents=True, exist_ok=True)
    with sizes_only(not write_media):
        return builder(cfg, media_dir, tokenizer)
