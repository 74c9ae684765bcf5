"""Prompt-token estimator (pure-Python twin of the compiled ``_tokens``).

Estimates what tiktoken's ``cl100k_base`` would count, without a BPE vocabulary: the
text is split into the pieces cl100k's pre-tokenizer makes (letter runs with an optional
one-character prefix, digit groups of up to three, punctuation runs, whitespace runs),
each piece is priced from its kind and length, and every non-ASCII character adds a
weight by script (Han, kana, Hangul, CJK punctuation) or by UTF-8 length. Prices are in
thousandths of a token, tuned on ``tests/token_corpus.py`` and biased slightly high:
the gateway reserves (holds, TPM limits) on these numbers, so under-counting is worse
than over-counting. The sum is rounded up.

Character classes follow Python's ``re`` (and so ``str``) predicates, which the compiled
twin calls directly: a *letter* is alphanumeric but not a decimal digit, a *digit* is a
decimal digit, *space* is ``str.isspace``, a *newline* is ``\\r`` or ``\\n``, everything
else (``_`` included) is *punctuation*.

``count_chat`` follows OpenAI's recipe for chat models: 3 tokens per message plus its
string fields (``role``, ``content``, ``tool_call_id``, ...), 1 more for a ``name``, 3 to
prime the reply; image parts by the tile formula; tools by the JSON of each function.
Nothing in a malformed body raises: what is not countable counts 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = (
    "DEFAULT_IMAGE_HEIGHT",
    "DEFAULT_IMAGE_WIDTH",
    "NEEDS_JSON_SCHEMA",
    "NEEDS_STREAMING",
    "NEEDS_TOOLS",
    "NEEDS_VISION",
    "count_chat",
    "count_text",
    "image_tokens",
    "needs_mask",
    "scan_chat",
)

# -- text ------------------------------------------------------------------------------

# cl100k_base's pre-tokenizer with Python's classes (see the module docstring).
_PIECE = re.compile(
    r"([^\r\n\w]|_)?([^\W\d_]+)"  # 1 prefix, 2 letters
    r"|(\d{1,3})"  # 3 digits
    r"|( ?(?:[^\s\w]|_)+)[\r\n]*"  # 4 punctuation (and the newlines after it)
    r"|(\s+\Z|\s*[\r\n]|\s+(?!\S)|\s)"  # 5 whitespace
)

# Price of a run of ASCII letters by its length (index; the last entry is per extra
# letter beyond the table), when the run follows a space and otherwise.
_WORD_SP = (0, 1000, 1000, 1000, 1030, 1050, 1080, 1200, 1350, 1300, 1250, 1450, 1800, 1900, 2300, 2400, 2700, 280)
_WORD_NS = (0, 1050, 1100, 1200, 1200, 1250, 1350, 1500, 1750, 1750, 1950, 2300, 2600, 2900, 3100, 3300, 3500, 300)
# Price of a run of ASCII punctuation by its length (same layout).
_PUNCT = (0, 1000, 1020, 1150, 1700, 1800, 2800, 3000, 3300, 3600, 4000, 4400, 4800, 400)
_DIGITS = 1000  # a group of 1 to 3 digits is always one cl100k token
_SPACE = 1000  # a whitespace piece
_SPACE_PER_CHAR = 12  # long runs of spaces split every ~80
_PREFIX_NO_WORD = 1000  # an ASCII non-space prefix of a letter run without ASCII letters
_HUMP = 700  # a lower-case ASCII letter followed by an upper-case one (camelCase, ids)
_ALNUM_EDGE = 150  # an ASCII letter next to a digit (ids, hashes)

# Weights of non-ASCII characters, by script or else by UTF-8 length.
_HAN = 2100
_HAN_COMMON = 1000
_KANA = 1050
_HANGUL = 1400
_CJK_PUNCT = 1050
_UTF8_2 = 700
_UTF8_3 = 1100
_UTF8_4 = 2000

# The 549 CJK unified ideographs (U+4E00..U+9FFF) that are one cl100k token on their own:
# about two thirds of Han in running Chinese or Japanese text; every other one is 2 or 3.
HAN_COMMON = (
    "一万三上下不与专业东两个中串为主么义之也书了事二于五些交产享京人"
    "亿今介从他付代以们件价任份企优会传但位体何余作你使例供価保信修倍"
    "值停像元先入全公共关其具内円册再写出击分列则初利别到制前力功加务"
    "动動包化北区十午华单南即历原去县参及友反发取变口只可台右号司合同"
    "名后向否含听启告员周命和品哈商問器四回因国图土在地场址型城基報場"
    "填增声处备复外多大天失头女好如始子字存学安宋完定实审客家容密对导"
    "将小少尔就局展山岁州工左已市布常平年并广序库应店度建开异式引张当"
    "录形影径待後得微心必志态思性总息您情意感成我或户所手打找技投报拉"
    "持指按换据排接推提播支收改放政效数整文料断新方族无日时明易星是時"
    "景更最月有服期木未本机权束条来板构析果查标样核格案检模次款止正此"
    "步歳段每比民気水求江汽没治法注活流海消清游源火点無然片版物特率环"
    "现球理生用由电男画界番登的监目直相省看県真知码确示社票私种科秒称"
    "移程稍税稿空立站章端笑符第等签简算管箱米类系素索约级线组经结给络"
    "统编网置美老考者而联能自至色节英藏行表装西要見见规视角解言計記話"
    "読计认议记论设证评试话询该详语误说请读调象责败账货购费资起超路身"
    "车转软载辑输达过运近还这进连述退送选通速造連道邮部都配释里重量金"
    "钟钮链销错键长開間関门闭问间队阳陆限院除雅集雷需非面音页项预频题"
    "额首验高黑"
)
_RE_HAN_COMMON = re.compile("[" + HAN_COMMON + "]")
_RE_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_RE_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_RE_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_RE_CJK_PUNCT = re.compile("[\u3000-\u303f\uff00-\uff65\uffe0-\uffef]")
_RE_UTF8_2 = re.compile("[\x80-\u07ff]")
_RE_UTF8_4 = re.compile("[\U00010000-\U0001ffff\U00030000-\U0010ffff]")
_RE_HUMP = re.compile("[a-z][A-Z]")
_RE_ALNUM_EDGE = re.compile("[A-Za-z](?=[0-9])|[0-9](?=[A-Za-z])")


def _price(table: tuple[int, ...], n: int) -> int:
    last = len(table) - 2
    if n <= last:
        return table[n]
    return table[last] + (n - last) * table[-1]


def count_text(text: str) -> int:
    """Estimated ``cl100k_base`` token count of ``text`` (rounded up, biased high)."""
    if not isinstance(text, str):
        raise TypeError(f"count_text() expects str, not {type(text).__name__}")
    units = 0
    for m in _PIECE.finditer(text):
        kind = m.lastindex
        if kind == 2:
            word = m.group(2)
            ascii_letters = len(word) if word.isascii() else len(word.encode("ascii", "ignore"))
            prefix = m.group(1)
            if ascii_letters:
                units += _price(_WORD_SP if prefix == " " else _WORD_NS, ascii_letters)
            elif prefix is not None and prefix != " " and prefix.isascii():
                units += _PREFIX_NO_WORD
        elif kind == 3:
            units += _DIGITS
        elif kind == 4:
            punct = m.group(4)
            n = len(punct) if punct.isascii() else len(punct.encode("ascii", "ignore"))
            if punct[0] == " ":
                n -= 1
            units += _price(_PUNCT, n)
        else:
            units += _SPACE + _SPACE_PER_CHAR * (m.end() - m.start() - 1)
    units += _HUMP * len(_RE_HUMP.findall(text))
    units += _ALNUM_EDGE * len(_RE_ALNUM_EDGE.findall(text))
    if not text.isascii():
        han = len(_RE_HAN.findall(text))
        han_common = len(_RE_HAN_COMMON.findall(text))
        kana = len(_RE_KANA.findall(text))
        hangul = len(_RE_HANGUL.findall(text))
        cjk_punct = len(_RE_CJK_PUNCT.findall(text))
        utf8_2 = len(_RE_UTF8_2.findall(text))
        utf8_4 = len(_RE_UTF8_4.findall(text))
        non_ascii = len(text) - len(text.encode("ascii", "ignore"))
        utf8_3 = non_ascii - han - kana - hangul - cjk_punct - utf8_2 - utf8_4
        units += (
            (han - han_common) * _HAN
            + han_common * _HAN_COMMON
            + kana * _KANA
            + hangul * _HANGUL
            + cjk_punct * _CJK_PUNCT
            + utf8_2 * _UTF8_2
            + utf8_3 * _UTF8_3
            + utf8_4 * _UTF8_4
        )
    return (units + 999) // 1000


# -- images ----------------------------------------------------------------------------

# Images are not decoded, so their size is unknown: assume 1024x1024 (765 tokens at high
# detail), OpenAI's own worked example and the size of a typical screenshot or photo.
DEFAULT_IMAGE_WIDTH = 1024
DEFAULT_IMAGE_HEIGHT = 1024
_IMAGE_BASE = 85
_IMAGE_TILE = 170


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's tile formula for an image part of ``width`` x ``height`` pixels.

    ``low`` detail is a flat 85; otherwise the image is scaled to fit within 2048x2048,
    then so its shortest side is 768, and costs 85 + 170 per 512-pixel tile.
    """
    if detail == "low":
        return _IMAGE_BASE
    w, h = max(int(width), 1), max(int(height), 1)
    if w > 2048 or h > 2048:
        if w >= h:
            w, h = 2048, max(h * 2048 // w, 1)
        else:
            w, h = max(w * 2048 // h, 1), 2048
    if w >= h:
        w, h = max(w * 768 // h, 1), 768
    else:
        w, h = 768, max(h * 768 // w, 1)
    return _IMAGE_BASE + _IMAGE_TILE * (-(-w // 512)) * (-(-h // 512))


# -- chat ------------------------------------------------------------------------------

_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
_PER_TOOL_CALL = 3
_TOOLS_BLOCK = 12  # the tools preamble of the system prompt
_PER_TOOL = 8
_MAX_DEPTH = 32
# Audio: at least 10 tokens a second at no more than 16 kbit/s (2 KB/s, 2.7 KB of
# base64): one token per 256 base64 characters errs high.
_AUDIO_B64_PER_TOKEN = 256
# Files: count their decoded bytes as if they were text, 4 bytes a token.
_FILE_B64_PER_TOKEN = 5  # 5 base64 characters < 4 bytes

_DEFAULT_IMAGE = image_tokens(DEFAULT_IMAGE_WIDTH, DEFAULT_IMAGE_HEIGHT, "high")


def _strings(value: Any, depth: int = 0) -> int:
    """Tokens of every string inside ``value`` (keys named ``type`` skipped)."""
    if isinstance(value, str):
        return count_text(value)
    if depth >= _MAX_DEPTH:
        return 0
    total = 0
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "type":
                total += _strings(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            total += _strings(item, depth + 1)
    return total


def _json_tokens(value: Any) -> int:
    if isinstance(value, str):
        return count_text(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, skipkeys=True)
    except (TypeError, ValueError, RecursionError):
        return _strings(value)
    return count_text(text)


def _b64_tokens(value: Any, per_token: int) -> int:
    if isinstance(value, str):
        return -(-len(value) // per_token)
    return 0


def _image_part(image: Any) -> int:
    if isinstance(image, dict) and image.get("detail") == "low":
        return _IMAGE_BASE
    return _DEFAULT_IMAGE


def _part(part: Any) -> int:
    if not isinstance(part, dict):
        return _strings(part)
    kind = part.get("type")
    if kind == "image_url":
        return _image_part(part.get("image_url"))
    if kind == "input_audio":
        audio = part.get("input_audio")
        if isinstance(audio, dict):
            rest = {k: v for k, v in audio.items() if k != "data"}
            return _strings(rest) + _b64_tokens(audio.get("data"), _AUDIO_B64_PER_TOKEN)
        return _strings(audio)
    if kind == "file":
        file = part.get("file")
        if isinstance(file, dict):
            rest = {k: v for k, v in file.items() if k != "file_data"}
            return _strings(rest) + _b64_tokens(file.get("file_data"), _FILE_B64_PER_TOKEN)
        return _strings(file)
    return _strings(part)


def _content(content: Any) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, (list, tuple)):
        total = 0
        for part in content:
            total += _part(part)
        return total
    if isinstance(content, dict):
        return _part(content)
    return 0


def _function_call(call: Any) -> int:
    if not isinstance(call, dict):
        return _strings(call)
    total = _PER_TOOL_CALL
    name = call.get("name")
    if isinstance(name, str):
        total += count_text(name)
    if "arguments" in call:
        total += _json_tokens(call["arguments"])
    return total


def _tool_calls(calls: Any) -> int:
    if not isinstance(calls, (list, tuple)):
        return _strings(calls)
    total = 0
    for call in calls:
        if isinstance(call, dict) and "function" in call:
            total += _function_call(call["function"])
        else:
            total += _function_call(call)
    return total


def _message(message: Any) -> int:
    total = _PER_MESSAGE
    if not isinstance(message, dict):
        return total + _strings(message)
    for key, value in message.items():
        if key == "content":
            total += _content(value)
        elif key == "tool_calls":
            total += _tool_calls(value)
        elif key == "function_call":
            total += _function_call(value)
        elif isinstance(value, str):
            total += count_text(value)
            if key == "name":
                total += _PER_NAME
    return total


def _tool(tool: Any) -> int:
    total = _PER_TOOL
    if not isinstance(tool, dict):
        return total + _strings(tool)
    function = tool.get("function")
    if not isinstance(function, dict):
        return total + _strings(tool)
    for key, value in function.items():
        if key == "parameters":
            total += _json_tokens(value)
        elif isinstance(value, str):
            total += count_text(value)
    return total


def count_chat(messages: Any, tools: Any = None) -> int:
    """Estimated prompt tokens of a chat-completions ``messages`` list and its ``tools``."""
    total = _REPLY_PRIMING
    if isinstance(messages, (list, tuple)):
        for message in messages:
            total += _message(message)
    if isinstance(tools, (list, tuple)) and tools:
        total += _TOOLS_BLOCK
        for tool in tools:
            total += _tool(tool)
    return total


# -- what a chat request needs from an endpoint ---------------------------------------

# bits of needs_mask (the router's capability mask: meshfast.router.Needs)
NEEDS_TOOLS, NEEDS_VISION, NEEDS_JSON_SCHEMA, NEEDS_STREAMING = 1, 2, 4, 8
_IMAGE_PARTS = ("image_url", "input_image")


def needs_mask(req: dict[str, Any]) -> int:
    """What a (validated) chat request needs, as bits: tools (``tools`` or ``functions``),
    vision (an ``image_url`` / ``input_image`` part in a message's content list),
    json_schema (``response_format``) and streaming (``stream`` is true)."""
    mask = NEEDS_TOOLS if req.get("tools") or req.get("functions") else 0
    messages = req.get("messages")
    if isinstance(messages, (list, tuple)):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in _IMAGE_PARTS for part in content
            ):
                mask |= NEEDS_VISION
                break
    fmt = req.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        mask |= NEEDS_JSON_SCHEMA
    if req.get("stream") is True:
        mask |= NEEDS_STREAMING
    return mask


def scan_chat(req: dict[str, Any]) -> tuple[int, int]:
    """``(prompt tokens, needs_mask)`` of a chat request: what the pipeline reads before it
    routes and holds, in one call."""
    return count_chat(req.get("messages") or [], req.get("tools")), needs_mask(req)
