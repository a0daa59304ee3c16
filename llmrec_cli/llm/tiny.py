"""A tiny random Llama and a tiny byte-level BPE tokenizer, built in code: fast tests without any download.

The tokenizer is trained on a fixed corpus of English words, digits and punctuation, so prompts with item
titles tokenise into a realistic number of tokens and "Yes"/"No" and candidate indices are real tokens.
``tiny_bos_tokenizer`` is the same vocabulary behaving like Llama-3's tokenizer: it prepends a BOS and has a chat
template that starts with the BOS text, so code that tokenises templated prompts can be tested for doubled BOS.
"""
from __future__ import annotations

import functools

CORPUS = [
    "Yes No yes no Answer: The user watched these movies in order, most recent last.",
    "Answer: Yes Answer: No Answer: Yes Answer: No Answer: Yes Answer: No",
    "Will the user like the movie? Candidates: Which candidate will the user pick next? Reply with a number.",
    "Title year genres categories brand Action Adventure Animation Comedy Crime Documentary Drama Fantasy",
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western Children's Unknown",
    "Quantum Widget Gadget Nebula Harbor Crystal Garden Echo River Stone Falcon Orbit Lantern Meadow",
    " ".join(str(i) for i in range(0, 101)),
    " ".join(chr(c) for c in range(ord("A"), ord("Z") + 1)) + " Answer: A Answer: B Answer: C",
    "0 1 2 3 4 5 6 7 8 9 ( ) [ ] , . ; : ' \" - | # ? ! The a an of and to in is it for on with as by at",
    "Toy Story GoldenEye Four Rooms Get Shorty Copycat Star Wars Fargo Contact Titanic Scream Air Force One",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A PreTrainedTokenizerFast (byte-level BPE, ~1,000 tokens) with bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4 + [" ".join(f"{c}." for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")] * 8,
                            trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = None
    return fast


#: A Llama-3 shaped chat template over plain-text headers: BOS text first, then one header + content +
#: end-of-turn per message, and the assistant header as the generation prompt.
BOS_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_bos_tokenizer():
    """``tiny_tokenizer``'s vocabulary (same ids, so ``tiny_llama``'s model works with it) as a Llama-3 style
    tokenizer: ``add_special_tokens=True`` prepends ``<s>`` (a TemplateProcessing post-processor; no EOS) and
    ``chat_template`` is ``BOS_CHAT_TEMPLATE``, whose rendered text already starts with ``<s>``."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    plain = tiny_tokenizer()
    tok = Tokenizer.from_str(plain.backend_tokenizer.to_str())
    bos = plain.bos_token
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, plain.bos_token_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=plain.eos_token,
                                   pad_token=plain.pad_token)
    fast.chat_template = BOS_CHAT_TEMPLATE
    assert fast.get_vocab() == plain.get_vocab(), "the BOS variant must keep the tiny vocabulary"
    return fast


def tiny_llama_config(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                       max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)


def tiny_llama(seed: int = 0):
    """(model, tokenizer): a 2-layer, hidden-32 LlamaForCausalLM with random weights, in eval mode, fp32."""
    import torch
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tok)))
    model.eval()
    return model, tok


def sharpen(model, seed: int = 1):
    """Re-draw MODEL's matrices at a larger scale (in place; returns it): a random model's distributions are then
    far from uniform, so an off-by-one position or a wrong mask changes scores and greedy text visibly."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "embed" in name else 0.3))
    return model
