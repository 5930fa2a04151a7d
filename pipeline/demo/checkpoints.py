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
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.utils import logging as hf_logging

from expclip.stages.shared.clip_identity import LOCAL_DIR
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION, class_order

# Not 100 (OpenAI's value): tests prove logit_scale is read from the model, not assumed.
TINY_LOGIT_SCALE = 50.0
# Not the config's initial -10 (SigLIP's): tests prove the logit bias is read from the weights.
TINY_LOGIT_BIAS = -7.0
CLIP_WEIGHTS = "open_clip_model.safetensors"  # a name open_clip's local-dir loader looks for


def tiny_clip_cfg(image_size: int) -> dict:
    """open_clip model_cfg of a tiny ViT: 4x4 patches of any image size, 2 layers, width 64."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": image_size // 4},
        # The standard tokenizer and vocabulary, so `get_tokenizer` behaves as for real models.
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def tiny_siglip_cfg(image_size: int) -> dict:
    """The tiny ViT as SigLIP is trained: a sigmoid loss with a learnt logit bias (open_clip's `init_logit_bias`)."""
    return {**tiny_clip_cfg(image_size), "init_logit_bias": -10.0}


_T5_SPECIALS = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2
_OPT_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0, 1, 2, 3
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # the Q-Former's BERT vocabulary starts so


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
        if model.logit_bias is not None:
            model.logit_bias.fill_(TINY_LOGIT_BIAS)
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
    save_file(model.state_dict(), str(folder / CLIP_WEIGHTS))
    return LOCAL_DIR + str(folder.resolve())


def _sentences() -> list[str]:
    """What the tiny tokenizers are trained on: the protocol's words."""
    return [DEFAULT_INSTRUCTION, "a photo of a face", "an expression of"] + class_order()


def _tiny_bpe(specials: list[str], single: str, pair: str, added: str) -> Tokenizer:
    """A small BPE tokenizer whose templates add the special token `added`."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)  # no blank lines
    tokenizer.train_from_iterator(_sentences(), trainer=trainer)
    # A T5TokenizerFast / GPT2TokenizerFast over this model does not survive save_pretrained; a template does.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(added, tokenizer.token_to_id(added))]
    )
    return tokenizer


def _tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """Appends `</s>` like T5's."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_tiny_bpe(_T5_SPECIALS, "$A </s>", "$A </s> $B </s>", "</s>"),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def _tiny_opt_tokenizer() -> PreTrainedTokenizerFast:
    """Prepends `</s>` like OPT's (its BOS is `</s>`)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_tiny_bpe(_OPT_SPECIALS, "</s> $A", "</s> $A </s> $B", "</s>"),
        pad_token="<pad>",
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def _tiny_bert_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer that wraps text in `[CLS] ... [SEP]`, like the Q-Former's BERT one."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=_BERT_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(_sentences(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _tiny_vision(image_size: int) -> dict:
    """ViT fields shared by the tiny BLIP checkpoints: 4x4 patches of any image size, 1 layer, width 32."""
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": image_size, "patch_size": image_size // 4}


_TINY_QFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def _tiny_t5(tokenizer: PreTrainedTokenizerFast) -> dict:
    """Flan-T5-like fields (gated GELU, untied head) of a 2-layer, width-48 T5 over `tokenizer`."""
    return {
        "vocab_size": len(tokenizer), "d_model": 48, "d_kv": 12, "d_ff": 96, "num_layers": 2,
        "num_decoder_layers": 1, "num_heads": 4, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }


def _save(folder: Path, model: torch.nn.Module, processor) -> Path:
    """Model and processor side by side, as the hub holds them."""
    hf_logging.disable_progress_bar()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


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
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**{**_tiny_vision(image_size), **(vision or {})}).to_dict(),
        qformer_config=Blip2QFormerConfig(
            **{**_TINY_QFORMER, "vocab_size": len(tokenizer), **(qformer or {})}
        ).to_dict(),
        text_config=T5Config(**{**_tiny_t5(tokenizer), **(text or {})}).to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    return _save(folder, Blip2ForConditionalGeneration(config).to(dtype), processor)


def save_tiny_blip2_opt(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random BLIP-2 with an OPT language model (tied head, `</s>` first) and its processor."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = Blip2Processor(image_processor, _tiny_opt_tokenizer(), num_query_tokens=32)
    tokenizer = processor.tokenizer
    text_config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=48, word_embed_proj_dim=48, ffn_dim=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**_tiny_vision(image_size)).to_dict(),
        qformer_config=Blip2QFormerConfig(**_TINY_QFORMER, vocab_size=len(tokenizer)).to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    return _save(folder, Blip2ForConditionalGeneration(config), processor)


def save_tiny_instructblip(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random InstructBLIP Flan-T5 (its Q-Former reads the instruction too) and its processor."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    qformer_tokenizer = _tiny_bert_tokenizer()
    processor = InstructBlipProcessor(image_processor, _tiny_t5_tokenizer(), qformer_tokenizer, num_query_tokens=32)
    tokenizer = processor.tokenizer
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(**_tiny_vision(image_size)).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            **_TINY_QFORMER, vocab_size=len(qformer_tokenizer), pad_token_id=qformer_tokenizer.pad_token_id,
        ).to_dict(),
        text_config=T5Config(**_tiny_t5(tokenizer)).to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    return _save(folder, InstructBlipForConditionalGeneration(config), processor)
