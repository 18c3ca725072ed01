"""The cost model the simulator times every piece of work with, read from a profile.

Measured on one device (``epd.profile``); what one device cannot show is modelled and stated here:

- **Tensor parallelism** (``tp`` ranks per instance): a step's compute and weight reads split
  evenly, ``step / tp``, plus two all-reduces per layer of the step's activations
  (``[tokens, hidden]``), each ``latency + 2 (tp - 1) / tp * bytes / bandwidth`` (a ring), with
  the bandwidth and latency of the profile's ``parallel`` section (or ``sim.allreduce_*``). KV
  capacity: ``tp`` devices hold the weights once and KV in the rest of their memory; KV heads are
  replicated where ``tp`` exceeds their number.
- **Between nodes** a transfer runs at ``sim.internode_gbps`` with ``sim.internode_latency_us``
  more fixed cost (assumed, not measured).
- A **language step** is ``prefill + decode`` parts sharing one fixed cost (``epd.profile.schema``).
- A calibration made at several loads (``calibration.points``, each a load and its factors) gives
  factors that move with the load: ``epd.sim.simulate`` first runs the job from the profile alone to
  find how busy its busiest device is, then takes each factor on the straight line between the
  points around that utilisation (the nearest point's outside them).
- A profile's optional ``calibration`` section (``epd.sim.calibrate``: a real run of the job against its
  simulation) scales each kind of work by a factor: ``frontend`` (tokenize and probe), ``fetch``,
  ``preprocess``, ``tower``, ``transfer`` (embeddings), ``kv_transfer``, ``prefill`` and ``decode``
  (the two parts of a step; under tensor parallelism the compute, not the all-reduces). What the
  profile measured alone, the calibration has seen inside a job. Between nodes only the transfer's
  intra-node fixed part is scaled: the inter-node link is assumed, not measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from epd.profile.fit import Piecewise, evaluate, evaluate_features, intercept
from epd.sim.config import SimOptions

log = logging.getLogger("epd.sim")

_WARNED: set[str] = set()
SHARING = ("num_gpus", "contention", "shared_host", "cpu_cores", "host_cores")
"""Options that decide how work shares devices: a calibration holds for the values it was made with."""

CALIBRATED = ("frontend", "fetch", "preprocess", "tower", "transfer", "kv_transfer", "prefill", "decode")
"""The kinds of work a profile's ``calibration.factors`` may scale (``epd.sim.calibrate``)."""


def calibration_points(profile: dict) -> list[tuple[float, dict[str, float]]]:
    """A calibration made at several loads (``epd.sim.calibrate run=A,B``): ``(load, factors)`` by load,
    where ``load`` is the utilisation of the busiest device in the run simulated from the profile alone
    (``Simulation.peak_utilisation``); empty for a calibration made at one load."""
    points = (profile.get("calibration") or {}).get("points") or []
    out = []
    for i, point in enumerate(points):
        load = point.get("load") if isinstance(point, dict) else None
        if isinstance(load, bool) or not isinstance(load, (int, float)) or not 0 <= load < float("inf"):
            raise ValueError(f"profile calibration: points[{i}].load={load!r} must be a number >= 0")
        out.append((float(load), calibration_factors({"calibration": point})))
    return sorted(out, key=lambda p: p[0]) if len(out) > 1 else []


def factors_at(points: list[tuple[float, dict[str, float]]], load: float) -> dict[str, float]:
    """Each kind's factor at ``load``: straight lines between the calibration's points, the nearest
    point's factors outside them (no extrapolation)."""
    if load <= points[0][0]:
        return dict(points[0][1])
    for (l0, f0), (l1, f1) in zip(points, points[1:], strict=False):
        if load <= l1:
            w = (load - l0) / (l1 - l0) if l1 > l0 else 1.0
            return {k: f0[k] + (f1[k] - f0[k]) * w for k in f0}
    return dict(points[-1][1])


def calibration_factors(profile: dict) -> dict[str, float]:
    """The profile's calibration factors, every kind present (1.0 where it has none); ``ValueError``
    names a factor that is unknown or not a positive number."""
    given = (profile.get("calibration") or {}).get("factors") or {}
    unknown = sorted(set(given) - set(CALIBRATED))
    if unknown:
        raise ValueError(f"profile calibration: unknown factor(s) {', '.join(unknown)}; known: {', '.join(CALIBRATED)}")
    out = {}
    for kind in CALIBRATED:
        value = given.get(kind, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"profile calibration: factor {kind}={value!r} must be a positive number")
        out[kind] = float(value)
    return out


@dataclass(frozen=True, kw_only=True)
class MediaSize:
    """What the cost model needs of one media item."""

    modality: str
    tokens: int
    """Tokens the tower produces for it (its embedding rows)."""
    size: float
    """Decode / processor size unit of its modality: pixels (image), seconds x pixels (video), seconds (audio)."""


class CostModel:
    """Seconds of each kind of work on the profiled hardware (before any sharing of a device)."""

    def __init__(self, profile: dict, opts: SimOptions, backend: str, load: float | None = None) -> None:
        self.profile = profile
        self.model = profile["model"]
        self.points = calibration_points(profile)
        self.factors = (
            factors_at(self.points, load) if self.points and load is not None else calibration_factors(profile)
        )
        """Per kind of work; with a calibration at several loads, its factors at ``load`` (the busiest
        device's utilisation in this run simulated from the profile alone: ``epd.sim.simulate``)."""
        made_with = (profile.get("calibration") or {}).get("sim") or {}
        differ = [f"sim.{k}={getattr(opts, k)!r} (calibrated with {made_with[k]!r})" for k in SHARING
                  if k in made_with and made_with[k] != getattr(opts, k)]  # fmt: skip
        if differ and ", ".join(differ) not in _WARNED:  # once per process (epd.plan simulates many shapes)
            _WARNED.add(", ".join(differ))
            log.warning("the profile's calibration was made with other sharing of devices: %s; its factors "
                        "hold for the sharing they were fitted under", ", ".join(differ))  # fmt: skip
        lang = profile["language"]
        self.block_size = int(lang["block_size"])
        self._prefill = lang["prefill_s"]["fit"]
        self._decode = lang["decode_s"]["fit"]
        self._prefill_at = Piecewise(self._prefill["knots"])
        self._decode_at = Piecewise(self._decode["knots"])
        self._decode0 = intercept(self._decode["knots"])
        self._tokenize = profile["frontend"]["tokenize_s"]["fit"]
        if backend not in profile["transfer"]:
            raise ValueError(
                f"transfer={backend!r} was not measured in this profile (it has {', '.join(profile['transfer'])}); "
                "pick one of those or profile again"
            )
        self._transfer = profile["transfer"][backend]["fit"]
        control = profile["control"]
        self.control_latency_s = float(control["latency_s"])
        self.send_s = float(control.get("send_s", 0.0))
        """A rank sending one control message (its loop pays it)."""
        self.recv_s = float(control.get("recv_s", 0.0))
        """The frontend receiving one message."""
        self.poll_s = float(control.get("poll_s", 0.0))
        """One turn of a rank's loop polling its inbox."""
        self._probe = profile["frontend"].get("probe_s", {})
        self._prepare_fit = profile["language"].get("prepare_s", {}).get("fit")
        par = profile["parallel"]
        self.allreduce_bw = (
            (opts.allreduce_gbps * 1e9) if opts.allreduce_gbps else float(par["allreduce_bw_bytes_per_s"])
        )
        self.allreduce_lat = (
            opts.allreduce_latency_us * 1e-6
            if opts.allreduce_latency_us is not None
            else float(par["allreduce_latency_s"])
        )
        self.internode_bw = opts.internode_gbps * 1e9
        self.internode_lat = opts.internode_latency_us * 1e-6
        self.embed_row_bytes = (
            int(self.model["hidden_size"]) * int(self.model["dtype_bytes"]) * int(self.model.get("embed_rows", 1))
        )

    # ---- frontend and encoder -------------------------------------------------------------------

    def tokenize_s(self, prompt_tokens: int) -> float:
        """The frontend's chat template + tokenizer for one request."""
        return evaluate(self._tokenize, prompt_tokens) * self.factors["frontend"]

    def probe_s(self, item: MediaSize) -> float:
        """The frontend sizing and hashing one item."""
        fit = self._probe.get(item.modality)
        return evaluate(fit["fit"], item.size) * self.factors["frontend"] if fit else 0.0

    def prepare_s(self, prompt_tokens: int) -> float:
        """A language instance expanding a prompt whose items are in (positions, embedding merge)."""
        return evaluate(self._prepare_fit, prompt_tokens) if self._prepare_fit else 0.0

    def _media(self, modality: str) -> dict:
        enc = self.profile["encoder"]
        if modality not in enc:
            raise ValueError(f"the profile has no {modality} costs (it measured {', '.join(enc)}); profile again")
        return enc[modality]

    def fetch_s(self, item: MediaSize) -> float:
        """Fetching and decoding one item's media on a decode thread."""
        return evaluate(self._media(item.modality)["fetch_s"]["fit"], item.size) * self.factors["fetch"]

    def preprocess_s(self, item: MediaSize) -> float:
        """The family's HF processor on one item (serialised per encoder by the processor's lock)."""
        return evaluate(self._media(item.modality)["preprocess_s"]["fit"], item.size) * self.factors["preprocess"]

    def tower_s(self, tokens_by_modality: dict[str, list[int]]) -> float:
        """One tower call of the items' tokens: one packed call per modality, one after the other."""
        total = 0.0
        for modality, tokens in tokens_by_modality.items():
            features = {
                "one": 1.0,
                "items": len(tokens),
                "tokens": sum(tokens),
                "tokens_sq": sum(t * t for t in tokens),
            }
            total += evaluate_features(self._media(modality)["tower_s"]["fit"], features)
        return total * self.factors["tower"]

    def embed_bytes(self, tokens: int) -> int:
        """Bytes an item's embeddings (and DeepStack features) take on the wire."""
        return tokens * self.embed_row_bytes

    # ---- data plane --------------------------------------------------------------------------------

    def transfer_parts(self, nbytes: float, internode: bool = False, kind: str = "transfer") -> tuple[float, float]:
        """(fixed cost, bandwidth time) of moving ``nbytes`` between two ranks; ``kind`` is ``transfer``
        (embeddings) or ``kv_transfer`` (a prefilled request's KV cache), whose calibrations differ."""
        fixed, per_byte = self._transfer["a"] * self.factors[kind], self._transfer["b"] * self.factors[kind]
        if internode:
            return fixed + self.internode_lat, nbytes / self.internode_bw
        return fixed, nbytes * per_byte

    # ---- language ------------------------------------------------------------------------------------

    def step_s(self, prefills: list[tuple[int, int]], decode_batch: int, decode_context: int, tp: int = 1) -> float:
        """One engine step: prefill chunks ``(tokens, tokens already computed)`` and ``decode_batch``
        decoding sequences holding ``decode_context`` tokens in all, on an instance of ``tp`` ranks."""
        t = 0.0
        num_prefill = 0
        f = self.factors
        if prefills:
            num_prefill = sum(n for n, _ in prefills)
            t += self._prefill_at(num_prefill) * f["prefill"]
            t += self._prefill["attn_s"] * sum(n * (c + n / 2) for n, c in prefills) * f["prefill"]
        if decode_batch:
            d = self._decode_at(decode_batch)
            t += ((d - self._decode0 if prefills else d) + self._decode["ctx_s"] * decode_context) * f["decode"]
        return self.tp_step(t, num_prefill + decode_batch, tp)

    def tp_step(self, t: float, tokens: int, tp: int) -> float:
        """A step measured on one device, run by ``tp`` ranks (the module docstring's model)."""
        if tp == 1:
            return t
        nbytes = tokens * int(self.model["hidden_size"]) * int(self.model["dtype_bytes"])
        one = self.allreduce_lat + 2 * (tp - 1) / tp * nbytes / self.allreduce_bw
        return t / tp + 2 * int(self.model["num_layers"]) * one

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes of one token over the whole instance (KV heads replicated past their number)."""
        per = int(self.profile["language"]["kv_bytes_per_token"])
        kv_heads = int(self.model.get("num_kv_heads", 1))
        return per * max(1, tp // kv_heads) if tp > kv_heads else per

    def kv_capacity_tokens(self, tp: int = 1, configured: int | None = None) -> int:
        """KV capacity of an instance of ``tp`` ranks: ``configured`` (``engine.kv_tokens``) when set,
        else the profiled device's memory for weights + KV, ``tp`` times, less one copy of the weights."""
        if configured is not None:
            return configured
        lang = self.profile["language"]
        measured = int(lang["kv_capacity_tokens"])
        if tp == 1:
            return measured
        per_token = int(lang["kv_bytes_per_token"])
        usable = measured * per_token + int(self.model["weight_bytes"])  # one device: weights + KV
        return int((tp * usable - int(self.model["weight_bytes"])) // self.kv_bytes_per_token(tp))

    def kv_transfer_bytes(self, tokens: int) -> int:
        """Bytes of a request's KV cache (every shard together)."""
        return tokens * int(self.profile["language"]["kv_bytes_per_token"])
