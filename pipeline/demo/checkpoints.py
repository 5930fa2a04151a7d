"""Tiny random checkpoints saved exactly like real ones, for tests, the demo and benchmarks.

They exercise the real loading paths (open_clip `local-dir:`, transformers
`from_pretrained` with a trained tokenizer) in a second, so every encoder code
path runs without pretrained weights or network access.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers.utils import logging as hf_logging
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    PreTrainedTokenizerFast,
    T5Config,
)

from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION, class_order
from expclip.stages.shared.clip_identity import LOCAL_DIR

# Not 100 (OpenAI's value): tests prove logit_scale is read from the model, not assumed.
TINY_LOGIT_SCALE = 50.0


def tiny_clip_cfg(image_size: int) -> dict:
    """open_clip model_cfg of a tiny ViT: 4x4 patches of any image size, 2 layers, width 64."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": image_size // 4},
        # The standard tokenizer and vocabulary, so `get_tokenizer` behaves as for real models.
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }

_T5_SPECIALS = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2


def save_tiny_clip(folder: Path, *, seed: int = 0, image_size: int = 32, model_cfg: dict | None = None) -> str:
    """Write a tiny random open_clip ViT to `folder`; returns its `local-dir:` model name.

    `image_size=224` gives a model that accepts the official transform's tensors;
    `model_cfg` replaces the tiny architecture (benchmarks use a real one, e.g. ViT-L-14's).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_cfg = model_cfg or tiny_clip_cfg(image_size)
    model = open_clip.CLIP(**model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(TINY_LOGIT_SCALE))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(OPENAI_DATASET_MEAN),
            "std": list(OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return LOCAL_DIR + str(folder.resolve())


def _tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A small BPE tokenizer trained on the protocol's words; appends `</s>` like T5's."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=_T5_SPECIALS)
    sentences = [DEFAULT_INSTRUCTION, "a photo of a face", "an expression of"] + class_order()
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    # A T5TokenizerFast over a BPE model does not survive save_pretrained; this does.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_blip2(
    folder: Path, *, seed: int = 0, image_size: int = 32, vision: dict | None = None, qformer: dict | None = None,
    text: dict | None = None, dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random BLIP-2 with a T5 language model and its processor to `folder`.

    `image_size=224` gives a model that accepts the official transform's tensors;
    `vision` / `qformer` / `text` override config fields (benchmarks build real-width models this way).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = Blip2Processor(image_processor, _tiny_t5_tokenizer(), num_query_tokens=32)
    tokenizer = processor.tokenizer  # now holds the `<image>` placeholder token too
    text_config = T5Config(**{
        "vocab_size": len(tokenizer), "d_model": 48, "d_kv": 12, "d_ff": 96, "num_layers": 2,
        "num_decoder_layers": 1, "num_heads": 4, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id, **(text or {}),
    })
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**{
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": image_size, "patch_size": image_size // 4, **(vision or {}),
        }).to_dict(),
        qformer_config=Blip2QFormerConfig(**{
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": len(tokenizer), **(qformer or {}),
        }).to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).to(dtype)
    hf_logging.disable_progress_bar()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
