"""Tiny random Transformers models built offline (no hub here), saved once per test run with save_pretrained into a
shared folder: what the hf tests point model.encoder.pretrained / model.pretrained at."""
from __future__ import annotations

import json
from pathlib import Path

from shared_artifacts import build_once, shared_dir

DEMO_TRAIN = Path(__file__).resolve().parent.parent / "spx" / "demo" / "corpus" / "train.jsonl"
# small enough to train in seconds on one core; strides 5x4x4 = 80 samples per latent frame (5 ms)
SSL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32, 32),
           conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
           vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
           layerdrop=0.0)
# the real checkpoints' total conv stride, 320 samples (20 ms) per frame: s3prl's experts (ESPnet's ssl frontend)
# assume it, so the cross-toolkit tests use these
SSL_320 = {**SSL, "conv_dim": (32, 32, 32, 32), "conv_kernel": (10, 4, 4, 4), "conv_stride": (5, 4, 4, 4)}


def build_ssl(folder: Path) -> None:
    import torch
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    torch.manual_seed(0)
    for name, config, model in (("wav2vec2", Wav2Vec2Config, Wav2Vec2Model), ("hubert", HubertConfig, HubertModel),
                                ("wavlm", WavLMConfig, WavLMModel)):
        for sub, sizes in ((name, SSL), (f"{name}_s320", SSL_320)):
            # the base model only, as the hub's pretrained SSL checkpoints are: no CTC head yet
            model(config(**sizes)).save_pretrained(folder / sub)
            Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                     return_attention_mask=True).save_pretrained(folder / sub)
    # the large/XLS-R/MMS layout (pre-norm layers): the one that has Transformers' attention adapters
    Wav2Vec2Model(Wav2Vec2Config(**SSL, do_stable_layer_norm=True, feat_extract_norm="layer")).save_pretrained(
        folder / "wav2vec2_stable")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder / "wav2vec2_stable")


def build_whisper(folder: Path) -> None:
    """A tiny Whisper with a byte-level BPE tokenizer trained on the demo corpus text plus Whisper's special tokens,
    and the generation config that generate(language=, task=) reads."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line).get("text", "") for line in DEMO_TRAIN.read_text().splitlines()[1:]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = (["<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"])
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    eot = "<|endoftext|>"
    wt = WhisperTokenizer(tokenizer_file=str(folder / "tokenizer.json"), bos_token=eot, eos_token=eot, unk_token=eot,
                          pad_token=eot)
    ids = wt.convert_tokens_to_ids
    config = WhisperConfig(vocab_size=len(wt), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_target_positions=64, pad_token_id=wt.pad_token_id,
                           bos_token_id=ids(eot), eos_token_id=ids(eot), decoder_start_token_id=ids("<|startoftranscript|>"),
                           dropout=0.0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, max_length=64, is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), suppress_tokens=[], begin_suppress_tokens=[ids(eot)])
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80, sampling_rate=16000),
                     tokenizer=wt).save_pretrained(folder)


def tiny_models(tmp_path_factory) -> Path:
    """Folder with wav2vec2/, hubert/, wavlm/ (5 ms frames), wavlm_s320/, hubert_s320/, wav2vec2_s320/ (20 ms frames,
    the real checkpoints' stride), wav2vec2_stable/ and whisper/ (built once per test run)."""
    def build(folder: Path) -> None:
        build_ssl(folder)
        build_whisper(folder / "whisper")

    return build_once(shared_dir(tmp_path_factory, "hf_tiny_models"), build)
