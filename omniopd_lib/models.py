"""Models: hub ids, local folders and GGUF files loaded through one from_pretrained path; the fp32 LM head; the
default teacher of a real student's family; LoRA adapters (PEFT) and the reference they leave behind."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

import toyworld
from omniopd_lib.common import OmniOPDError


def resolve_model_path(name: str, role: str) -> str:
    """'toy', 'stories' or 'stories-foreign' -> that offline model's shipped checkpoint; 'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'; else as given."""
    if name in toyworld.OFFLINE_WORLDS or name in toyworld.FOREIGN_TEACHERS:
        return str(toyworld.world_model_dir(name, role))
    if name.startswith("Qwen") and "/" not in name and not Path(name).exists():
        return "Qwen/" + name
    return name


def load_model(name: str, role: str, device: torch.device, dtype=torch.float32):
    """A causal LM and its tokenizer through the same from_pretrained path for toy and hub models;
    a .gguf file (llama.cpp's format) is dequantised into a plain model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    path = resolve_model_path(name, role)
    if (name in toyworld.OFFLINE_WORLDS or name in toyworld.FOREIGN_TEACHERS) and not Path(path).exists():
        world = name if name in toyworld.FOREIGN_TEACHERS else {"toy": "arithmetic"}.get(name, name)
        raise OmniOPDError(f"the offline {role} model '{name}' is not built here ({path}): "
                           f"python -m omniopd_tools.build_world --world {world}")
    try:
        if path.endswith(".gguf"):
            model, tokenizer = load_gguf(Path(path), dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            check_causal_lm(AutoConfig.from_pretrained(path))
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = model.to(device)
    except Exception as error:  # transformers raises many kinds for a file or folder it cannot use
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if not Path(path).exists() and not path.endswith(".gguf"):   # a hub id: fetched, or found in the cache
            raise OmniOPDError(f"cannot fetch {role} model {path} from the Hugging Face Hub ({reason}); where the "
                               f"Hub is reachable, `hf download {path} --local-dir DIR`, then --{role} DIR") from None
        raise OmniOPDError(f"cannot load {role} model '{name}' ({path}): {reason}") from None
    tokenizer.padding_side = "left"  # prompts end where generation begins
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_causal_lm(config) -> None:
    """AutoModelForCausalLM also builds a BERT or a T5 encoder into a 'causal LM' with an untrained head:
    refuse a folder whose config names no causal-LM architecture."""
    names = getattr(config, "architectures", None) or []
    if config.is_encoder_decoder or (names and not any("CausalLM" in n or "LMHead" in n for n in names)):
        raise ValueError(f"not a causal language model (its config names {', '.join(names) or config.model_type})")


def load_gguf(path: Path, dtype):
    """transformers reads a GGUF file into dequantised tensors but keeps a quantization config that stops
    save_pretrained; the weights are copied into a model built from the plain config, which saves like any other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def fp32_output_head(model):
    """Under bf16 autocast the LM head's output would be bf16, in steps of 0.125 near logit 20. Measured by
    bench/bf16_logits.py on SmolLM2-135M: with bf16 logits the anchor KL was 24 % off and its gradient 39 %;
    with the head in fp32 (the decoder still in bf16), 7 % and 23 %. So the student's and the reference's
    head runs in fp32; the state dict is unchanged."""
    head = model.get_output_embeddings()

    def forward(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())
    head.forward = forward
    return model


# an instruct model of the student's family that fits beside it on one GPU, by the start of the student's name
FAMILY_TEACHERS = (("qwen2.5-math", "Qwen/Qwen2.5-Math-7B-Instruct"), ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),
                   ("qwen3", "Qwen/Qwen3-8B"), ("llama-3", "meta-llama/Llama-3.1-8B-Instruct"),
                   ("smollm2", "HuggingFaceTB/SmolLM2-1.7B-Instruct"), ("gemma-3", "google/gemma-3-12b-it"))


def family_teacher(student: str) -> str:
    """The default teacher of a real student: FAMILY_TEACHERS' entry for its name, or "" (check_config asks for one)."""
    name = Path(student).name.lower()
    return next((teacher for family, teacher in FAMILY_TEACHERS if name.startswith(family)), "")


def is_instruct(student: str) -> bool:
    """An instruct (chat-tuned) model, by the convention of its name: Qwen2.5-0.5B-Instruct, gemma-3-1b-it."""
    return bool(re.search(r"instruct|chat|-it\b", Path(student).name, re.I))


def add_lora(student, cfg):
    """Rank-r LoRA adapters (PEFT) injected into the student's linear layers, which are frozen; the student
    object stays the transformers model every function here takes. From --resume: that checkpoint's adapter.
    Returns the PEFT model (it saves the adapter and switches it off for the reference)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    if cfg.gradient_checkpointing:   # frozen embeddings: checkpointed blocks still need an input that wants grad
        student.enable_input_require_grads()
    if cfg.resume:
        if not (Path(cfg.resume) / "adapter_config.json").is_file():
            raise OmniOPDError(f"--resume {cfg.resume} with --lora-rank: the checkpoint has no LoRA adapter "
                               f"(adapter_config.json); it was not trained with --lora-rank")
        return PeftModel.from_pretrained(student, cfg.resume, is_trainable=True)
    targets = cfg.lora_target_modules if cfg.lora_target_modules == "all-linear" else cfg.lora_target_modules.split(",")
    try:
        return get_peft_model(student, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                                                  lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                  task_type="CAUSAL_LM"))
    except ValueError as error:   # e.g. target modules the model does not have
        raise OmniOPDError(f"--lora-target-modules {cfg.lora_target_modules}: {str(error).splitlines()[0][:200]}") from None


class AdapterOff(torch.nn.Module):
    """The reference π_ref under LoRA: the student's own weights with the adapter switched off, which are
    exactly the starting weights (the base is frozen), so no second copy of the model is loaded."""

    def __init__(self, lora):
        super().__init__()
        self.lora = [lora]   # a list, so the student is not registered (and saved, moved) twice

    def forward(self, **inputs):
        lora = self.lora[0]
        with torch.no_grad(), lora.disable_adapter():
            return lora.get_base_model()(**inputs)


def save_merged(run, folder: Path) -> Path:
    """--merge-lora: W + (α/r)·BA written into a plain transformers model (loads without PEFT). Runs last: merging
    consumes the adapter."""
    merged = run.lora.merge_and_unload()
    merged.save_pretrained(folder)
    run.tokenizer.save_pretrained(folder)
    return folder


def load_student(cfg, device):
    """The student π_θ and its tokenizer: from --resume's checkpoint (a LoRA checkpoint holds the adapter only, so
    its base comes from --student), with the fp32 LM head, gradient checkpointing if asked, and the LoRA adapter.
    Returns (student, tokenizer, lora); lora is the PEFT model around the student, or None."""
    student, tokenizer = load_model(cfg.student if cfg.lora_rank else (cfg.resume or cfg.student), "student", device)
    fp32_output_head(student)
    if cfg.gradient_checkpointing:  # drafts are scored with their whole prefix: F·K long sequences with grad
        getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
    lora = add_lora(student, cfg) if cfg.lora_rank else None
    return student, tokenizer, lora


def load_reference(cfg, lora, device):
    """π_ref, frozen at the starting weights: the student with its adapter switched off under LoRA, else a second
    copy of --student; None when the anchor is off (β = 0)."""
    if cfg.kl_beta <= 0:
        return None
    if lora is not None:
        return AdapterOff(lora)
    reference, _ = load_model(cfg.student, "student", device)
    return fp32_output_head(reference.eval().requires_grad_(False))
