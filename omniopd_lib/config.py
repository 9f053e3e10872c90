"""The command line: each dataclass field an option, its help text the field's, its choices checked."""

import argparse
import dataclasses
import datetime
import os
import string
import typing
from dataclasses import dataclass, field

import toyworld
from omniopd_lib.common import OmniOPDError
from omniopd_lib.data import held_out_source
from omniopd_lib.generation import CODE_TEMPLATE, PLAIN_TEMPLATE
from omniopd_lib.models import family_teacher, is_instruct
from omniopd_lib.teachers import parse_price, read_teacher_prompt






def option(default, help, choices=None):
    """A Config field with its --help text (and its allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


class DefaultsInHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where it is None: the config sets those itself, as the help says."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv, config_class, description: str):
    """Build the command line from a config dataclass (omniopd.Config, or scale/'s subclass): --field-name, with
    the field's help; returns the config with its runtime fields resolved."""
    parser = argparse.ArgumentParser(description=description, formatter_class=DefaultsInHelp)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            # int | None: a field whose default (None) the config resolves itself
            kinds = [k for k in typing.get_args(f.type) if k is not type(None)] or [f.type]
            kind = {"int": int, "float": float, "str": str}[kinds[0] if isinstance(kinds[0], str) else kinds[0].__name__]
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"], choices=f.metadata["choices"])
    return config_class(**vars(parser.parse_args(argv))).resolved()


def check_prompt_template(template: str) -> None:
    """--prompt-template: {question} must be there, and no other name in braces ({{ and }} for literal braces)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as error:   # a lone { or }
        raise OmniOPDError(f"--prompt-template: {error}; write {{{{ and }}}} for literal braces") from None
    names = {name for name, _, _ in fields}
    if any(spec or conversion for _, spec, conversion in fields):   # {question:d} fails later; {question:>99…} fills memory
        raise OmniOPDError("--prompt-template: write {question} plain, with no format spec or conversion (:… or !…)")
    if names - {"question"}:
        raise OmniOPDError(f"--prompt-template: unknown placeholder {{{sorted(names - {'question'})[0]}}}; the only "
                           f"one is {{question}}")
    if "question" not in names:
        raise OmniOPDError("--prompt-template has no {question}: every prompt would be the same")


# a real model's scale where the method leaves 0 (auto): rollouts as long as GSM8K solutions need, a rate that
# does not wreck a pretrained model in a few steps; each offline world names its own (toyworld.world_settings)
REAL_MODEL_SETTINGS = {"max_new_tokens": 512, "lr": 1e-6}


@dataclass
class RunOptions:
    """What to train on and how to run: models, data, the teacher's endpoint, the code checker, LoRA, checkpoints,
    evaluation and tracking. omniopd.Config adds the method's own fields."""
    # what to train, on what
    student: str = option("stories", "student model: an offline world's ('stories', 'toy', 'code'), a local folder, a hub "
                                     "id, or a bare Qwen name (Qwen2.5-0.5B)")
    teacher: str = option("", "teacher: an offline world's, a local folder or hub id (HF model), or openai:MODEL for any "
                              "OpenAI-compatible endpoint (empty = the student's world's teacher; for a real student, "
                              "an instruct model of its family: Qwen2.5 -> Qwen/Qwen2.5-7B-Instruct)")
    data: str = option("", "training prompts: an offline world ('stories': word problems in several phrasings; 'toy': "
                           "arithmetic; 'code': Python functions with tests, --task code), 'human-eval[:SPLIT]', "
                           "a JSONL, JSON, Parquet or CSV file, a dataset folder, or a Hub dataset id with "
                           "optional config and split (openai/gsm8k:main:train) (empty = the student's world; for a "
                           "real student, openai/gsm8k:main:train)")
    eval_data: str = option("", "held-out problems for accuracy, in the same forms as --data (split 'test' unless "
                                "named; empty = the test split of --data's source, or an error when it has none)")
    task: str = option("math", "math: a final answer checked against the reference; code: a program run against the "
                               "row's tests in a sandbox (HumanEval, MBPP or stdin/stdout rows; --data human-eval)",
                       ["math", "code"])
    question_field: str = option("", "the rows' question field (empty = the first of question, problem, prompt, messages)")
    answer_field: str = option("", "the rows' reference-answer field (empty = answer, else solution)")
    eval_size: int = option(200, "number of held-out problems to evaluate (0 = all)")
    prompt_template: str = option(PLAIN_TEMPLATE, "how a question becomes the student's prompt; 'chat': the student's own "
                                                  "chat template around it (the default for a real student whose "
                                                  "name says Instruct, -it or Chat); 'plain': this default")
    system_prompt: str = option("", "with --prompt-template chat: a system message before the question (empty = none)")
    # code checker (--task code)
    checker_workers: int = option(0, "programs checked at once, each in its own sandboxed process (0 = CPU cores)")
    checker_timeout: float = option(5.0, "seconds of wall-clock time one program run may take")
    checker_memory_mb: int = option(1024, "address space one program run may use, in MiB")
    code_reward: str = option("pass", "grpo on code: pass = 1 when every test passes; fraction = the share passed",
                              ["pass", "fraction"])
    # teacher endpoint (openai:MODEL)
    teacher_base_url: str = option("", "base URL of an OpenAI-compatible endpoint (empty = the openai client's default)")
    teacher_api_key_env: str = option("OPENAI_API_KEY", "name of the environment variable holding the teacher's API key")
    teacher_mode: str = option("auto", "chat: ask the teacher to continue the partial solution; completion: send the raw prefix; auto: chat for openai: and for HF models with a chat template",
                              ["auto", "chat", "completion"])
    teacher_temperature: float = option(1.0, "teacher sampling temperature")
    teacher_timeout: float = option(60.0, "seconds before one teacher request times out")
    teacher_retries: int = option(4, "retries per teacher request on timeouts, 429 and 5xx, with exponential backoff")
    teacher_concurrency: int = option(8, "teacher requests in flight at once")
    teacher_price: str = option("", "dollars per million prompt and completion tokens (and optionally cached prompt "
                                    "tokens), e.g. '2.5,10' or '2.5,10,1.25', for the cost meter (teacher/dollars)")
    teacher_prompt: str = option("", "file whose text is sent to the teacher instead of the built-in instruction, with "
                                     "{prefix} (required), {question} and {answer} (the row's reference solution, for a "
                                     "teacher with privileged information) filled in; {{ and }} for literal braces")
    teacher_reasoning_effort: str = option("", "API reasoning models: sent as reasoning_effort (e.g. low), with the budget as "
                                              "max_completion_tokens, which thinking also spends: raise --teacher-max-tokens")
    gradient_checkpointing: bool = option(False, "recompute activations in backward: far less memory for long rollouts")
    lora_rank: int = option(0, "r > 0: train a rank-r LoRA adapter (PEFT) instead of every weight; the reference is then "
                               "the base under the adapter, with no second copy (0 = full fine-tuning)")
    lora_alpha: float = option(0.0, "LoRA α: the adapter's update is scaled by α / r (0 = 2·r)")
    lora_dropout: float = option(0.0, "LoRA dropout on the adapter's input")
    lora_target_modules: str = option("all-linear", "modules that get an adapter: all-linear (every linear layer but the "
                                                    "output head) or names, comma-separated (q_proj,v_proj)")
    merge_lora: bool = option(False, "with --lora-rank: at the end, also save the base with the adapter merged in, as a "
                                     "plain model in <out>/merged")
    # run
    seed: int = option(0, "random seed for data order, sampling and initial evaluation")
    device: str = option("auto", "auto (cuda when present, else cpu), cpu, or cuda")
    out: str = option("", "run folder (empty = runs/<timestamp>)")
    resume: str = option("", "checkpoint folder to resume from (its weights, optimizer, step and RNG)")
    save_every: int = option(0, "save a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = option(2, "checkpoints to keep; older ones are deleted")
    eval_every: int = option(0, "evaluate every N steps (0 = only before and after training)")
    eval_samples: int = option(0, "if n > 0, also report mean accuracy over n answers sampled at temperature τ")
    eval_teacher: bool = option(True, "also report the teacher's accuracy when it is a local model")
    report_to: str = option("none", "also log metrics.jsonl's figures, the learning curve and, at each evaluation, a few "
                                    "forks (drafts, p̂, teacher continuations) to tensorboard (<out>/tensorboard) or "
                                    "wandb (project $WANDB_PROJECT, default omniopd; WANDB_MODE=offline works offline)",
                            ["none", "tensorboard", "wandb"])
    view_every: int = option(0, "record the forks of every Nth step for the run's page (<out>/view.jsonl; python -m "
                                "omniopd_tools.view OUT draws it); 0 = every ⌈steps/8⌉th, and always the first, each "
                                "evaluation's and the last")

    @property
    def world(self):
        """The offline world the student belongs to ('stories', 'toy', 'code'), or None for a real model."""
        return self.student if self.student in toyworld.OFFLINE_WORLDS else None

    @property
    def size_defaults(self) -> dict:
        """max_new_tokens and lr where the method's fields say 0: the student's world's (with a foreign teacher, its
        variant world's), or a real model's."""
        return toyworld.world_settings(self.world, self.teacher) if self.world else REAL_MODEL_SETTINGS

    def resolved(self):
        """Fill the empty and 0-means-auto fields: an offline world's student gets that world's teacher and data;
        a real one an instruct teacher of its family, GSM8K, and its chat template when it is an instruct model."""
        world = self.world
        self.teacher = self.teacher or world or family_teacher(self.student)
        self.data = self.data or world or "openai/gsm8k:main:train"
        self.task = "code" if self.data == "code" or self.data.split(":")[0] == "human-eval" else self.task
        self.eval_data = self.eval_data or held_out_source(self.data, self.task)
        if self.prompt_template == PLAIN_TEMPLATE and not world and is_instruct(self.student) and self.task == "math":
            self.prompt_template = "chat"
        if self.task == "code" and self.prompt_template == PLAIN_TEMPLATE:   # the student continues the code
            self.prompt_template = CODE_TEMPLATE
        self.prompt_template = PLAIN_TEMPLATE if self.prompt_template == "plain" else self.prompt_template
        self.checker_workers = self.checker_workers or os.cpu_count() or 1
        self.out = self.out or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
        return self

    def check(self) -> None:
        """Run settings that cannot work are stopped before anything loads, each with the reason."""
        rules = [(self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
                 (self.lora_rank >= 0, "--lora-rank must be 0 (full fine-tuning) or positive"),
                 (not self.merge_lora or self.lora_rank > 0, "--merge-lora needs --lora-rank: there is no adapter to merge"),
                 (self.task != "code" or self.data not in toyworld.MATH_WORLDS,
                  f"--task code: --data {self.data} is a math world; name code problems (human-eval, or a JSONL or "
                  f"dataset of HumanEval, MBPP or stdin/stdout rows)"),
                 (self.checker_timeout > 0 and self.checker_memory_mb >= 64, "--checker-timeout must be positive and "
                                                                             "--checker-memory-mb at least 64"),
                 (self.teacher or getattr(self, "method", "") == "grpo",
                  f"no default teacher for student {self.student}: name one with --teacher (a local folder, hub id "
                  f"or openai:MODEL)"),
                 (self.eval_data, f"--data {self.data} has no test split of its own: name held-out problems with "
                                  f"--eval-data"),
                 (self.teacher_concurrency >= 1, "--teacher-concurrency must be at least 1"),
                 (0 < self.teacher_timeout < float("inf"), "--teacher-timeout must be a positive, finite number of "
                                                           "seconds"),
                 (self.teacher_retries >= 0, "--teacher-retries must be 0 or more"),
                 (0 <= self.teacher_temperature < float("inf"), "--teacher-temperature must be 0 or more, finite")]
        for ok, message in rules:
            if not ok:
                raise OmniOPDError(message)
        if self.prompt_template != "chat":
            check_prompt_template(self.prompt_template)
        if self.teacher_prompt:
            read_teacher_prompt(self.teacher_prompt)
        parse_price(self.teacher_price)


def offline_if_the_world_is(cfg) -> None:
    """Everything an offline world's run needs ships with the repository: never ask the Hub."""
    if cfg.world:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
