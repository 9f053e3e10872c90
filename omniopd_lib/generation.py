"""Prompts and sampling: templates filled or a chat template applied, left padding, position ids that skip
it, and generate() with nothing but the temperature (no checkpoint sampling defaults), prefilling each prompt once."""

import torch
import torch.nn.functional as F

from omniopd_lib.common import OmniOPDError

# how a question becomes a prompt: a base model's plain template, and code, which the student continues as it is
PLAIN_TEMPLATE = "Question: {question}\nAnswer: "
CODE_TEMPLATE = "{question}"


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation config."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def tokens_generated(new_ids: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """Each row's generated tokens, its stop token included: up to the first stop, or the whole width for a row
    that never stopped (generation runs while any row does). Counting the ids that are not padding would miss an
    EOS that is also the pad token (SmolLM2, Llama-3 and others pad with EOS)."""
    is_stop = torch.isin(new_ids, stops)
    first_stop = is_stop.int().argmax(1)
    return torch.where(is_stop.any(1), first_stop + 1, torch.full_like(first_stop, new_ids.shape[1]))


def format_prompts(tokenizer, questions: list[str], template: str, system_prompt="") -> list[str]:
    """Each question as the student's prompt: the template filled in, or with template 'chat' the tokenizer's
    own chat template around one user message (after a system message, if given), as TRL formats `messages`."""
    if template != "chat":
        return [template.format(question=q) for q in questions]
    if not getattr(tokenizer, "chat_template", None):
        raise OmniOPDError("--prompt-template chat: this model's tokenizer has no chat template; use a plain template")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [tokenizer.apply_chat_template(system + [{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def encode_prompts(tokenizer, questions: list[str], template: str, device, system_prompt="") -> dict:
    """Left-padded token ids of the formatted prompts, with the tokenizer's own special tokens: the BOS that
    Llama-3, Gemma and Mistral models were trained with (Qwen's tokenizers add none). A chat template writes
    its special tokens into the text itself."""
    texts = format_prompts(tokenizer, questions, template, system_prompt)
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=template != "chat").to(device)


def generate(model, tokenizer, input_ids, attention_mask, max_new_tokens, temperature, n=1, watch=None):
    """Sample from softmax(logits / τ) (temperature > 0) or decode greedily: no top-k, top-p, min-p or penalties,
    whatever the checkpoint's generation_config.json says. watch: a logits processor that sees each step's raw
    logits (EntropyRecorder)."""
    from transformers import GenerationConfig
    model = getattr(model, "get_base_model", lambda: model)()   # under PEFT: the model whose generation_config counts
    sampling = (dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=n)
                if temperature > 0 else dict(do_sample=False))   # n greedy answers are one answer n times
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stop_token_ids(model, tokenizer), **sampling)
    # generate() fills every field we leave unset from model.generation_config: Qwen2.5-Instruct's would add
    # temperature 0.7, top-k 20, top-p 0.8 and a repetition penalty. A blank one leaves only the library defaults.
    checkpoint_defaults, model.generation_config = model.generation_config, GenerationConfig()
    was_training = model.training
    model.eval()  # in train mode, gradient checkpointing would switch off the KV cache
    try:
        with torch.no_grad():
            prefilled = {}
            if n > 1 and temperature > 0 and input_ids.shape[1] > 1:
                prefilled, input_ids, attention_mask = prefill_once(model, input_ids, attention_mask, n)
                config.num_return_sequences = 1
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                 logits_processor=[watch] if watch else None, **prefilled)
    finally:
        model.generation_config = checkpoint_defaults
        model.train(was_training)
    out = out if temperature > 0 else out.repeat_interleave(n, dim=0)
    return out[:, input_ids.shape[1]:]


def prefill_once(model, input_ids, attention_mask, n):
    """The KV cache of each prompt but its last token, computed once and copied to its n samples (generate()
    with num_return_sequences = n would run the prompt n times). Returns generate()'s cache argument and the
    prompts repeated n times; generate() then starts from the last prompt token, exactly where it would have."""
    import inspect
    from transformers import DynamicCache
    cache, decoder = DynamicCache(config=model.config), model.get_decoder()   # the decoder alone: no logits needed
    # transformers 5 renamed past_key_values to cache
    argument = {("cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"): cache}
    decoder(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
            position_ids=positions(attention_mask[:, :-1]), use_cache=True, **argument)
    cache.batch_repeat_interleave(n)
    return argument, input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as generate() computes them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(sequences: list[list[int]], pad_id: int, device) -> dict:
    """Right-align token lists into input_ids and attention_mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def cut_at_stop(ids: list[int], stops: set) -> list[int]:
    """A chunk up to and including its first stop token."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i + 1]
    return ids


def decode_after(tokenizer, prefix_ids: list[int], ids: list[int]) -> str:
    """The text that ids add after prefix_ids: decode(prefix + ids) minus decode(prefix). Decoded alone, a chunk
    loses its leading space under SentencePiece tokenizers (Llama-2, Mistral, Gemma), and the teacher's
    continuation of the same prefix keeps it."""
    head = tokenizer.decode(prefix_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prefix_ids + ids, skip_special_tokens=True)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(ids, skip_special_tokens=True)


def response_texts(tokenizer, rollout) -> list[str]:
    """Each y as text, cut where its mask ends: tokens after EOS are never decoded (in Qwen2.5's vocabulary
    id 0 is "!", so zeroing them would append "!!!" to the answer)."""
    lengths = rollout.response_mask_B_T.sum(1).tolist()
    return tokenizer.batch_decode([ids[:n] for ids, n in zip(rollout.response_ids_B_T.tolist(), lengths)],
                                  skip_special_tokens=True)


def completion_nll(model, tokenizer, questions, completions, template, num_tokens=None, system_prompt="") -> torch.Tensor:
    """Mean next-token NLL of each completion given its prompt, -mean_t log π(y_t | x, y_<t)
    (SFT; also how the toy teacher and student were trained). The completion ends with EOS.
    The mean divides by num_tokens when given."""
    prompts = [tokenizer(text, add_special_tokens=template != "chat")["input_ids"]
               for text in format_prompts(tokenizer, questions, template, system_prompt)]
    answers = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
    batch = left_pad([p + a for p, a in zip(prompts, answers)], tokenizer.pad_token_id, model.device)
    width = max(len(a) for a in answers)  # left-padded: each completion is the last len(a) columns
    logits = model(**batch, position_ids=positions(batch["attention_mask"]), logits_to_keep=width + 1).logits
    targets = batch["input_ids"][:, -width:].clone()
    for i, a in enumerate(answers):
        targets[i, :width - len(a)] = -100
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return nll / (num_tokens or int((targets != -100).sum()))
