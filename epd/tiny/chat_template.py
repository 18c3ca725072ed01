"""ChatML chat templates (the Qwen prompt format) for tiny checkpoints, written for epd.

Output for ``[{"role": "user", "content": [image, "hi"]}]`` with ``add_generation_prompt``::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>
    <|im_start|>assistant

Messages are OpenAI style: ``content`` is a string, ``None`` or a list of parts. A part's kind is
its ``type`` (``text``, ``image``/``image_url``, ``video``/``video_url``,
``audio``/``input_audio``/``audio_url``) or, without one, the first such key it holds. A family
gives one placeholder per modality it supports; a part of any other modality raises.

Family variants: Qwen3 models (Qwen3-VL, Qwen3-Omni) add no default system message; Qwen2-Audio
numbers its clips (``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Jinja body shared by every family; the family's placeholders are `set` in a header and the
# @...@ slots are filled by `chatml_template`. `add_vision_id=True` (a real Qwen option) prefixes
# "Picture N: " / "Video N: ".
_BODY = r"""
{%- set counts = namespace(image=0, video=0, audio=0) -%}
{%- for message in messages -%}
@DEFAULT_SYSTEM@  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- elif message['content'] is not none -%}
    {%- for part in message['content'] -%}
      {%- if part is string -%}
        {%- set kind = 'text' -%}
      {%- elif part['type'] is defined and part['type'] is not none -%}
        {%- set kind = part['type'] -%}
      {%- else -%}
        {%- set kind = namespace(v='unknown') -%}
        {%- for key in ['text', 'image', 'image_url', 'video', 'video_url', 'audio', 'input_audio', 'audio_url'] -%}
          {%- if kind.v == 'unknown' and key in part -%}{%- set kind.v = key -%}{%- endif -%}
        {%- endfor -%}
        {%- set kind = kind.v -%}
      {%- endif -%}
      {%- if kind in ['image', 'image_url'] -%}{%- set modality = 'image' -%}
      {%- elif kind in ['video', 'video_url'] -%}{%- set modality = 'video' -%}
      {%- elif kind in ['audio', 'input_audio', 'audio_url'] -%}{%- set modality = 'audio' -%}
      {%- elif kind == 'text' -%}{%- set modality = 'text' -%}
      {%- elif kind == 'unknown' -%}
        {{- raise_exception('content part has neither a type nor a text/image/video/audio key') -}}
      {%- else -%}{{- raise_exception('unknown content part type: ' + kind|string) -}}
      {%- endif -%}
      {%- if modality == 'text' -%}
        {{- part if part is string else part['text'] -}}
      {%- elif placeholders[modality] is not defined -%}
        {{- raise_exception(modality + ' parts are not supported by this model') -}}
      {%- elif modality == 'image' -%}
        {%- set counts.image = counts.image + 1 -%}
        {%- if add_vision_id -%}{{- 'Picture ' + counts.image|string + ': ' -}}{%- endif -%}
        {{- placeholders['image'] -}}
      {%- elif modality == 'video' -%}
        {%- set counts.video = counts.video + 1 -%}
        {%- if add_vision_id -%}{{- 'Video ' + counts.video|string + ': ' -}}{%- endif -%}
        {{- placeholders['video'] -}}
      {%- else -%}
        {%- set counts.audio = counts.audio + 1 -%}
@AUDIO@      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


# Pieces spliced into `_BODY` (a family without a default system prompt, or with numbered audio,
# gets a different template; the defaults reproduce the Qwen2.5-VL template byte for byte).
_DEFAULT_SYSTEM = r"""  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}
  {%- endif -%}
"""
_AUDIO = r"""        {{- placeholders['audio'] -}}
"""
# Qwen2-Audio numbers every clip: "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n".
_NUMBERED_AUDIO = r"""        {{- 'Audio ' + counts.audio|string + ': ' + placeholders['audio'] -}}
"""


def chatml_template(
    placeholders: Mapping[str, str],
    default_system: str | None = DEFAULT_SYSTEM_PROMPT,
    numbered_audio: bool = False,
) -> str:
    """Return the Jinja chat template for a family.

    ``placeholders`` maps a modality (``image``, ``video``, ``audio``) to the text one part of it
    becomes, e.g. ``{"image": "<|vision_start|><|image_pad|><|vision_end|>"}``; the processor
    later expands the pad token to the encoder's token count. ``default_system`` is the system
    message added when the conversation has none (``None``: add none, as Qwen3 models do);
    ``numbered_audio`` prefixes each audio part with ``Audio N: `` (Qwen2-Audio).
    """
    unknown = set(placeholders) - {"image", "video", "audio"}
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected image, video, audio")
    # json.dumps gives a valid Jinja string literal (double quotes, backslash escapes).
    header = "{%- set placeholders = " + json.dumps(dict(placeholders), sort_keys=True) + " -%}\n"
    if default_system is not None:
        header += "{%- set default_system = " + json.dumps(default_system) + " -%}"
    body = _BODY.replace("@DEFAULT_SYSTEM@", _DEFAULT_SYSTEM if default_system is not None else "")
    body = body.replace("@AUDIO@", _NUMBERED_AUDIO if numbered_audio else _AUDIO)
    return header + body
