"""transformers' reference for the oracle: ``generate`` on the monolithic model, one request at a
time, with media decoded by the same epd.media calls the encoders use (same frames, same samples)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from epd.frontend import to_template_messages
from epd.media import MediaConfig, load_audio, load_image, load_video
from epd.models.base import MediaInput
from epd.models.families.qwen_common import frame_sampling, load_hf_model, processor_kwargs


def hf_model_class(ckpt: Path):
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2AudioForConditionalGeneration

    arch = AutoConfig.from_pretrained(ckpt).architectures[0]
    return Qwen2AudioForConditionalGeneration if arch.startswith("Qwen2Audio") else AutoModelForImageTextToText


def reference_tokens(ckpt: Path, requests_file: Path) -> dict[str, list[int]]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ckpt)
    model = load_hf_model(ckpt, False, torch.device("cpu"), torch.float32, hf_model_class(ckpt))
    media_cfg = MediaConfig()
    out = {}
    for line in requests_file.read_text().splitlines():
        body = json.loads(line)
        messages, media = to_template_messages(body["messages"])
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs: dict = {}
        for ref in media:
            if ref.modality == "image":
                item = {"images": [load_image(ref.source)]}
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
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=body["max_tokens"])
        out[body["id"]] = ids[0, inputs["input_ids"].shape[1] :].tolist()
    return out
