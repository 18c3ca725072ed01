"""Files every tiny family writes the same way: processor files and the greedy generation config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from epd.tiny.tokenizer import special_token_ids


def save_processor(processor: Any, out_dir: Path, standalone: bool = True) -> None:
    """processor_config.json (sub-processors nested, transformers 5 layout), tokenizer files and
    chat_template.jinja; with ``standalone`` also each sub-processor's own file (preprocessor_config.json,
    video_preprocessor_config.json) as released repos ship them and older loaders read."""
    processor.save_pretrained(out_dir)
    if standalone:
        for name in ("image_processor", "video_processor", "feature_extractor"):
            sub = getattr(processor, name, None)
            if sub is not None:
                sub.save_pretrained(out_dir)


def greedy_generation_config(tokenizer: Any, special_tokens: tuple[str, ...], eos: tuple[str, ...]) -> GenerationConfig:
    """Greedy by default; stops on the ``eos`` tokens (in the released model's order); pads and
    begins with ``<|endoftext|>`` like the released Qwen checkpoints."""
    ids = special_token_ids(tokenizer.backend_tokenizer, special_tokens)
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids[token] for token in eos],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )


def save_shape(
    out_dir: Path, processor: Any, config: Any, generation_config: GenerationConfig, arch: str, standalone: bool = True
) -> None:
    """A weightless checkpoint: processor files (``standalone``: see ``save_processor``), config.json
    naming ``arch``, generation_config.json."""
    save_processor(processor, out_dir, standalone)
    config.architectures = [arch]
    config.save_pretrained(out_dir)
    generation_config.save_pretrained(out_dir)
