"""The command line: each dataclass field an option, its help text the field's, its choices checked."""

import argparse
import dataclasses
import string
from dataclasses import field

from omniopd_lib.common import OmniOPDError


PLAIN_TEMPLATE = "Question: {question}\nAnswer: "


CODE_TEMPLATE = "{question}"


def option(default, help, choices=None):
    """A Config field with its --help text (and its allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def parse_args(argv, config_class, description: str):
    """Build the command line from a config dataclass (omniopd.Config, or scale/'s subclass): --field-name, with
    the field's help; returns the config with its runtime fields resolved."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"], choices=f.metadata["choices"])
    return config_class(**vars(parser.parse_args(argv))).resolved()


def check_prompt_template(template: str) -> None:
    """--prompt-template: {question} must be there, and no other name in braces ({{ and }} for literal braces)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:   # a lone { or }
        raise OmniOPDError(f"--prompt-template: {error}; write {{{{ and }}}} for literal braces") from None
    if names - {"question"}:
        raise OmniOPDError(f"--prompt-template: unknown placeholder {{{sorted(names - {'question'})[0]}}}; the only "
                           f"one is {{question}}")
    if "question" not in names:
        raise OmniOPDError("--prompt-template has no {question}: every prompt would be the same")
