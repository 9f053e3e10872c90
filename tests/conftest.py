"""Shared fixtures: tiny real models built locally and loaded through from_pretrained."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

from omniopd_lib import models  # noqa: E402
import toyworld  # noqa: E402
from omniopd_tools.build_world import new_model  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "real: a real pretrained LLM (SmolLM2-135M-Instruct) or llama.cpp's server; "
                                       "needs requirements-real.txt")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Qwen2 with the character tokenizer, saved as an HF folder."""
    torch.manual_seed(0)
    tokenizer = toyworld.build_char_tokenizer()
    model = new_model(tokenizer, hidden=32, layers=2)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def tiny_lm(tiny_model_path):
    return models.load_model(tiny_model_path, "student", torch.device("cpu"))


@pytest.fixture
def serve():
    """start(model="echo", **options) -> (server, base URL): omniopd_tools/serve.py on a free loopback port,
    shut down after the test."""
    from omniopd_tools.serve import start_in_thread
    servers = []

    def start(model="echo", **options):
        server = start_in_thread(model, **options)
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield start
    for server in servers:
        server.shutdown()


QWEN_CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                      "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# what Qwen2.5-Instruct's generation_config.json carries: the model's own sampling defaults
INSTRUCT_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)


def build_qwen_like_tokenizer():
    """A tokenizer shaped like Qwen2.5's: byte-level BPE with trained merges and Qwen's pre-tokenizer (digits
    one by one), id 0 an ordinary token ("!"), pad <|endoftext|> ≠ EOS <|im_end|> ≠ <|im_start|>, a chat
    template. Trained in a fraction of a second on toy-world text."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import Qwen2Tokenizer

    alphabet = __import__("tokenizers").pre_tokenizers.ByteLevel.alphabet()
    bare = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(sorted(alphabet))}, merges=[])
    corpus = [r["question"] + " " + r["answer"] for r in toyworld.make_problems(600, "train", 0)]
    corpus += ["Let's think step by step. The answer is \\boxed{31}. Great!"] * 5
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = bare.backend_tokenizer.pre_tokenizer   # Qwen2's own split, as the class applies it
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, initial_alphabet=sorted(alphabet),
                                                        special_tokens=[], show_progress=False))
    import json
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    assert tokenizer.convert_ids_to_tokens(0) == "!" and tokenizer.pad_token_id not in (0, tokenizer.eos_token_id)
    return tokenizer


@pytest.fixture(scope="session")
def qwen_like_path(tmp_path_factory) -> str:
    """A tiny random Qwen2 with the Qwen2.5-shaped tokenizer, an embedding table padded past the tokenizer
    (as Qwen's 151,936 rows are), two stop tokens, and Instruct sampling defaults in its generation_config."""
    from transformers import GenerationConfig
    torch.manual_seed(0)
    tokenizer = build_qwen_like_tokenizer()
    model = new_model(tokenizer, hidden=32, layers=2)
    model.resize_token_embeddings(len(tokenizer) + 6, mean_resizing=False)
    end_of_text = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, end_of_text],
                                               pad_token_id=end_of_text, **INSTRUCT_SAMPLING)
    folder = tmp_path_factory.mktemp("qwen-like")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def bos_model_path(tmp_path_factory) -> str:
    """A tiny random Llama whose tokenizer puts <|begin_of_text|> before every text it encodes, as Llama-3's does."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    torch.manual_seed(0)
    backend = build_qwen_like_tokenizer().backend_tokenizer
    backend.add_special_tokens(["<|begin_of_text|>"])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, bos_token_id=bos,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("bos-lm")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
