"""transformers' reference for the oracle: ``generate`` on the monolithic model, one request at a
time, with media decoded by the same epd.media calls the encoders use (same frames, same samples)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from epd.frontend import to_template_messages
from epd.media import MediaConfig, load_audio, load_image, load_video, load_video_audio
from epd.models.base import MediaInput
from epd.models.families.qwen3_omni import OmniEncoder
from epd.models.families.qwen_common import frame_sampling, load_hf_model, processor_kwargs


def random_image(path: Path, size: tuple[int, int], seed: int) -> str:
    """A random RGB image of ``size`` (width, height) saved at ``path``; returns the path as a string."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def image_part(url: str) -> dict:
    """An OpenAI chat ``image_url`` content part."""
    return {"type": "image_url", "image_url": {"url": url}}


def hf_model_class(ckpt: Path):
    import transformers

    arch = transformers.AutoConfig.from_pretrained(ckpt).architectures[0]
    if arch in ("Qwen2AudioForConditionalGeneration", "Qwen3OmniMoeForConditionalGeneration"):
        return getattr(transformers, arch)
    return transformers.AutoModelForImageTextToText


def reference_tokens(ckpt: Path, requests_file: Path, audio_in_video: bool = False) -> dict[str, list[int]]:
    """Greedy tokens per request id. Qwen3-Omni's video processor does not sample frames, so for it
    the reference takes the frames epd's loader sampled (and, with ``audio_in_video``, their audio)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ckpt)
    model = load_hf_model(ckpt, False, torch.device("cpu"), torch.float32, hf_model_class(ckpt))
    omni = hasattr(model, "thinker")
    generate = model.thinker.generate if omni else model.generate
    gen_kwargs = {"use_audio_in_video": True} if audio_in_video else {}
    media_cfg = MediaConfig(allowed_dirs=[tempfile.gettempdir()])  # the tests' media lie under tmp_path
    out = {}
    for line in requests_file.read_text().splitlines():
        body = json.loads(line)
        messages, media = to_template_messages(body["messages"])
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs: dict = {}
        for ref in media:
            if ref.modality == "image":
                item = {"images": [load_image(ref.source, cfg=media_cfg)]}
            elif ref.modality == "video" and omni:
                sampling = frame_sampling(processor.video_processor, media_cfg)
                if audio_in_video:
                    clip, audio = load_video_audio(
                        ref.source, media_cfg, sampling, processor.feature_extractor.sampling_rate
                    )
                else:
                    clip, audio = load_video(ref.source, media_cfg, sampling), None
                item = OmniEncoder._kwargs(MediaInput(modality="video", data=clip, sampling=sampling, audio=audio))
            elif ref.modality == "video":  # every frame: transformers samples them itself here
                clip = load_video(ref.source, media_cfg)
                sampling = frame_sampling(processor.video_processor, media_cfg)
                item = {"videos": [clip.frames], "video_metadata": [clip.processor_metadata()]}
                item.update(sampling.processor_kwargs(presampled=False))
            else:
                audio = load_audio(ref.source, media_cfg, processor.feature_extractor.sampling_rate)
                item = processor_kwargs(MediaInput(modality="audio", data=audio))
            for key, value in item.items():
                if isinstance(value, list):
                    kwargs.setdefault(key, []).extend(value)
                else:
                    kwargs[key] = value
        inputs = processor(text=[text], return_tensors="pt", **kwargs)
        with torch.inference_mode():
            ids = generate(**inputs, do_sample=False, max_new_tokens=body["max_tokens"], **gen_kwargs)
        out[body["id"]] = ids[0, inputs["input_ids"].shape[1] :].tolist()
    return out
