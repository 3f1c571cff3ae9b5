#!/usr/bin/python3
"""Independent reference for shared/chat_template.cc.

Renders a fixed set of conversations with the real Hugging Face chat
templates (tests/data/chat_templates/*.jinja, the "chat_template" strings of
the models' tokenizer_config.json) using Jinja2 configured the way
transformers' apply_chat_template configures it, and tokenizes the result with
SentencePiece (tests/data/tokenizers/llama2/tokenizer.model) plus the special
tokens each model's Hugging Face tokenizer matches before SentencePiece runs.
A special token marked "rstrip" ("lstrip") in the model's tokenizer files
takes the whitespace after (before) it along, as Hugging Face's tokenizers do:
Phi-3-mini's role and end tokens are, so the template's "\n" after them is
no token (tests/data/tokenizers/phi3_mini_4k_instruct/README.md). The flags
are read from that directory's tokenizer_config.json (added_tokens_decoder).

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

PHI3_TOKENIZER_CONFIG = os.path.join(ROOT, "tests", "data", "tokenizers", "phi3_mini_4k_instruct",
                                     "tokenizer_config.json")

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
# special tokens, so "<s>" in the rendered text becomes id 1 and "</s>" id 2;
# neither strips whitespace. As {text: (id, lstrip, rstrip)}.
SP_SPECIAL_TOKENS = {"<s>": (1, False, False), "</s>": (2, False, False)}

# Unicode's White_Space property (PropList.txt): what Rust's
# char::is_whitespace, and so the tokenizers library's lstrip/rstrip, tests.
# Not Python's str.isspace(), which also counts U+001C..U+001F.
UNICODE_WHITE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) +
    [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


def is_white_space(character):
    return ord(character) in UNICODE_WHITE_SPACE


def phi3_special_tokens():
    """Every token of Phi-3-mini's added_tokens_decoder with its strip flags.

    Hugging Face matches all of them in text (also <s>, </s>, <unk>); the
    ids must agree with added_tokens.json's."""
    with open(PHI3_TOKENIZER_CONFIG, encoding="utf-8") as f:
        decoder = json.load(f)["added_tokens_decoder"]
    specials = {}
    for token_id, entry in decoder.items():
        specials[entry["content"]] = (int(token_id), bool(entry.get("lstrip", False)),
                                      bool(entry.get("rstrip", False)))
    for text, token_id in PHI3_ADDED_TOKENS.items():
        assert specials[text][0] == token_id, (text, specials[text], token_id)
    return specials


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
    """Leftmost-longest split of `text` into (is_special, piece) parts.

    A special token with rstrip swallows the whitespace after it, one with
    lstrip the whitespace before it (never past the previous special token)."""
    by_length = sorted(specials, key=len, reverse=True)
    parts = []
    plain_start = 0
    i = 0
    while i < len(text):
        hit = next((s for s in by_length if text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        _, lstrip, rstrip = specials[hit]
        plain_end = i
        if lstrip:
            while plain_end > plain_start and is_white_space(text[plain_end - 1]):
                plain_end -= 1
        if plain_start < plain_end:
            parts.append((False, text[plain_start:plain_end]))
        parts.append((True, hit))
        i += len(hit)
        if rstrip:
            while i < len(text) and is_white_space(text[i]):
                i += 1
        plain_start = i
    if plain_start < len(text):
        parts.append((False, text[plain_start:]))
    return parts


def tokenize(sp, text, specials):
    ids = []
    for is_special, piece in split_on_special(text, specials):
        ids.extend([specials[piece][0]] if is_special else sp.encode(piece))
    return ids


def main():
    sp = sentencepiece.SentencePieceProcessor(model_file=TOKENIZER_MODEL)
    formats = {
        # name: (template file, bos_token, eos_token, special tokens matched in text)
        "phi3": ("phi3_mini_4k_instruct.jinja", "<s>", "<|endoftext|>", phi3_special_tokens()),
        "llama2_chat": ("llama2_7b_chat_hf.jinja", "<s>", "</s>", SP_SPECIAL_TOKENS),
        "mistral_instruct": ("mistral_7b_instruct_v02.jinja", "<s>", "</s>", SP_SPECIAL_TOKENS),
    }
    renders = {"generator": "tests/reference/chat_reference.py", "formats": {}}
    phi3 = {
        "generator": "tests/reference/chat_reference.py",
        "tokenizer": "tests/data/tokenizers/llama2/tokenizer.model + Phi-3-mini added_tokens.json",
        "added_tokens": PHI3_ADDED_TOKENS,
        "added_token_flags": "tests/data/tokenizers/phi3_mini_4k_instruct/tokenizer_config.json "
                             "(added_tokens_decoder: rstrip on <|assistant|>, <|end|>, <|system|>, "
                             "<|user|>, the placeholders and </s>)",
        "chat_template": "tests/data/chat_templates/phi3_mini_4k_instruct.jinja",
        "cases": [],
    }
    for name, (template_file, bos, eos, specials) in formats.items():
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
