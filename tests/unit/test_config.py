"""The config tree composes, converts to typed dataclasses, and bad values fail with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from epd.config import RunConfig, build_run_config, load_run_config, save_run_config
from epd.config.schema import GROUPS, field_defaults
from epd.models import detect_family
from epd.run import CONF_DIR
from tests.conftest import REPO


def _compose(*overrides: str) -> RunConfig:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return build_run_config(OmegaConf.to_container(cfg, resolve=True))


def test_default_is_colocated_tiny():
    cfg = _compose()
    assert cfg.topology.name == "colocated" and cfg.topology.world_size == 1
    assert cfg.model.tiny == "qwen2_5_vl" and cfg.workload.name == "random_image"


@pytest.mark.parametrize(
    ("topology", "world", "encoders", "languages"), [("1e1p", 2, [0], [1]), ("2e1p", 3, [0, 1], [2])]
)
def test_topologies(topology, world, encoders, languages):
    cfg = _compose(f"+topology={topology}", "transfer=shm", "workload.request_rate=0.5")
    assert cfg.topology.world_size == world
    assert cfg.topology.encoder_ranks == encoders and cfg.topology.language_ranks == languages
    assert cfg.transfer.backend == "shm" and cfg.workload.request_rate == 0.5


def test_every_option_of_every_group_converts():
    for group in GROUPS:
        for yaml in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
            extra = ["workload.path=x.jsonl"] if yaml.stem == "file" else []
            prefix = "+" if group == "topology" else ""
            cfg = _compose(f"{prefix}{group}={yaml.stem}", *extra)
            assert getattr(cfg, group) is not None


def test_schema_nodes_cover_every_field():
    for group, cls in GROUPS.items():
        assert set(field_defaults(cls)) == {f for f in cls.__dataclass_fields__}, group


def test_inf_rate_and_roundtrip(tmp_path):
    cfg = _compose("+topology=2e1p", "workload.request_rate=inf")
    save_run_config(cfg, tmp_path / "c.json")
    again = load_run_config(tmp_path / "c.json")
    assert again == cfg and again.workload.request_rate == float("inf")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["engine.max_num_seqs=0"], "engine.max_num_seqs must be"),
        (["device=tpu"], "device='tpu' is not one of"),
        (["device=cuda"], "no CUDA GPU is visible"),
        (
            ["scheduler.encoder_policy=fastest"],
            "scheduler.encoder_policy='fastest' is unknown; known: cache_affinity, least_loaded, modality, round_robin, split",
        ),
        (["transfer.backend=carrier_pigeon"], "carrier_pigeon"),
        (["model.dtype=int3"], "model.dtype='int3' is not one of"),
        (["workload=file"], "needs workload.path"),
        (["workload.num_requests=many"], "workload.num_requests: expected an integer"),
    ],
)
def test_bad_values_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _compose(*overrides)


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown config key"):
        build_run_config({"model": {"tiny": "qwen2_5_vl", "colour": "red"}})


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*not supported.*Qwen2_5_VLForConditionalGeneration"):
        detect_family(tmp_path)


def _epd(*args: str, launcher: tuple[str, ...] = ("-m", "epd.run")) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *launcher, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_errors_exit_before_any_rank_starts(tmp_path):
    missing = _epd(f"model.path={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/r1")
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
    assert not (tmp_path / "r1" / "results.json").exists()
    offline = _epd("model=qwen2_5_vl", f"hydra.run.dir={tmp_path}/r2")
    assert offline.returncode == 2
    assert "model.path=" in offline.stderr and "model.random_init=true" in offline.stderr


def test_torchrun_with_the_wrong_world_size(tmp_path):
    proc = _epd(
        "+topology=2e1p",
        f"hydra.run.dir={tmp_path}/r",
        launcher=("-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "epd.run"),
    )
    assert proc.returncode != 0
    assert "needs 3 rank(s) but torchrun started 2" in proc.stderr
    assert "--nproc-per-node 3" in proc.stderr
