#!/usr/bin/python3
"""Independent reference for shared/chat_template.cc.

Renders a fixed set of conversations with the real Hugging Face chat
templates (tests/data/chat_templates/*.jinja, the "chat_template" strings of
the models' tokenizer_config.json) using Jinja2 configured the way
transformers' apply_chat_template configures it, and tokenizes the result with
SentencePiece (tests/data/tokenizers/llama2/tokenizer.model) plus the special
tokens each model's Hugging Face tokenizer matches before SentencePiece runs.

Nothing here shares code with the C++ implementation: the rendering is Jinja2
executing the published template text, the token ids come from the Python
bindings of SentencePiece.

Needs Debian's python3-jinja2 and python3-sentencepiece (scripts/install_deps.sh).
Run from anywhere:

    /usr/bin/python3 tests/reference/chat_reference.py

Writes:
  tests/data/golden/chat_template_renders.json  every format x conversation x
      add_generation_prompt: the rendered text and ids, or "error" when the
      template raises.
  tests/data/golden/phi3_chat_ids.json  the Phi-3 subset (text and ids).
"""

import json
import os
import sys

import jinja2
import jinja2.sandbox
import sentencepiece

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TEMPLATES = os.path.join(ROOT, "tests", "data", "chat_templates")
TOKENIZER_MODEL = os.path.join(ROOT, "tests", "data", "tokenizers", "llama2", "tokenizer.model")
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")

# Phi-3-mini's added_tokens.json (see tests/data/tokenizers/llama2/README.md).
PHI3_ADDED_TOKENS = {
    "<|endoftext|>": 32000,
    "<|assistant|>": 32001,
    "<|placeholder1|>": 32002,
    "<|placeholder2|>": 32003,
    "<|placeholder3|>": 32004,
    "<|placeholder4|>": 32005,
    "<|system|>": 32006,
    "<|end|>": 32007,
    "<|placeholder5|>": 32008,
    "<|placeholder6|>": 32009,
    "<|user|>": 32010,
}

# Llama 2 and Mistral: the Hugging Face tokenizer treats its BOS/EOS text as
# special tokens, so "<s>" in the rendered text becomes id 1 and "</s>" id 2.
SP_SPECIAL_TOKENS = {"<s>": 1, "</s>": 2}

FORMATS = {
    # name: (template file, bos_token, eos_token, special tokens matched in text)
    "phi3": ("phi3_mini_4k_instruct.jinja", "<s>", "<|endoftext|>", PHI3_ADDED_TOKENS),
    "llama2_chat": ("llama2_7b_chat_hf.jinja", "<s>", "</s>", SP_SPECIAL_TOKENS),
    "mistral_instruct": ("mistral_7b_instruct_v02.jinja", "<s>", "</s>", SP_SPECIAL_TOKENS),
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "three_turn": [
        m("system", "You are a helpful assistant."),
        m("user", "What is the capital of France?"),
        m("assistant", "The capital of France is Paris."),
        m("user", "And of Italy?"),
    ],
    "no_system": [
        m("user", "Hi"),
        m("assistant", "Hello! How can I help?"),
        m("user", "Tell me a joke."),
    ],
    "single_user": [m("user", "Hello")],
    "ends_with_assistant": [m("user", "2+2?"), m("assistant", "4")],
    "empty_system": [m("system", ""), m("user", "Hi")],
    "empty_user": [m("user", "")],
    # Surrounding whitespace, including characters only Python's str.strip()
    # treats as whitespace (NBSP, ideographic space, U+001C).
    "whitespace": [
        m("system", "  Be brief.\n"),
        m("user", "\t hello world \n\n"),
        m("assistant", "\u3000 ok \u00a0"),
        m("user", "\x1c again\u2003"),
    ],
    "unicode_and_newlines": [
        m("system", "Antworte auf Deutsch.\n\nKurz."),
        m("user", "Gr\u00fc\u00dfe aus M\u00fcnchen \U0001F680 \u2014 \u65e5\u672c\u8a9e\nline2\n\nline3"),
    ],
    "special_token_text_in_content": [m("user", "say <|end|> now")],
    # Conversations the Llama 2 / Mistral templates reject (roles must
    # alternate user/assistant after an optional first system message).
    "two_users": [m("user", "a"), m("user", "b")],
    "assistant_first": [m("assistant", "a"), m("user", "b")],
    "system_not_first": [m("user", "a"), m("assistant", "b"), m("system", "c")],
}


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def render(template_text, messages, bos, eos, add_generation_prompt):
    # transformers' apply_chat_template: sandboxed, trim_blocks and
    # lstrip_blocks on, raise_exception available to templates.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(template_text)
    return template.render(messages=messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt)


def split_on_special(text, specials):
    """Leftmost-longest split of `text` into (is_special, piece) parts."""
    by_length = sorted(specials, key=len, reverse=True)
    parts = []
    plain_start = 0
    i = 0
    while i < len(text):
        hit = next((s for s in by_length if text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        if plain_start < i:
            parts.append((False, text[plain_start:i]))
        parts.append((True, hit))
        i += len(hit)
        plain_start = i
    if plain_start < len(text):
        parts.append((False, text[plain_start:]))
    return parts


def tokenize(sp, text, specials):
    ids = []
    for is_special, piece in split_on_special(text, specials):
        ids.extend([specials[piece]] if is_special else sp.encode(piece))
    return ids


def main():
    sp = sentencepiece.SentencePieceProcessor(model_file=TOKENIZER_MODEL)
    renders = {"generator": "tests/reference/chat_reference.py", "formats": {}}
    phi3 = {
        "generator": "tests/reference/chat_reference.py",
        "tokenizer": "tests/data/tokenizers/llama2/tokenizer.model + Phi-3-mini added_tokens.json",
        "added_tokens": PHI3_ADDED_TOKENS,
        "chat_template": "tests/data/chat_templates/phi3_mini_4k_instruct.jinja",
        "cases": [],
    }
    for name, (template_file, bos, eos, specials) in FORMATS.items():
        with open(os.path.join(TEMPLATES, template_file), encoding="utf-8") as f:
            template_text = f.read()
        cases = []
        for conv_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {"conversation": conv_name, "messages": messages,
                        "add_generation_prompt": add_generation_prompt}
                try:
                    text = render(template_text, messages, bos, eos, add_generation_prompt)
                except TemplateError as e:
                    case["error"] = str(e)
                else:
                    case["text"] = text
                    case["ids"] = tokenize(sp, text, specials)
                cases.append(case)
                if name == "phi3" and "text" in case:
                    phi3["cases"].append(case)
        renders["formats"][name] = {"template": template_file, "bos_token": bos,
                                    "eos_token": eos, "cases": cases}

    os.makedirs(GOLDEN, exist_ok=True)
    for file_name, data in (("chat_template_renders.json", renders), ("phi3_chat_ids.json", phi3)):
        with open(os.path.join(GOLDEN, file_name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=True)
            f.write("\n")
    print("wrote", os.path.join(GOLDEN, "chat_template_renders.json"), "and phi3_chat_ids.json",
          file=sys.stderr)


if __name__ == "__main__":
    main()
