# cython: language_level=3
"""Prompt-token estimator (compiled twin of ``tokens_py.py``).

See ``tokens_py.py`` for the method and the contract; both give identical counts. The
prices are read from ``tokens_py`` once, at import, into C arrays.
"""

cimport cython
from libc.string cimport memcmp, memset

import json as _json

from . import tokens_py as _py

__all__ = (
    "DEFAULT_IMAGE_HEIGHT",
    "DEFAULT_IMAGE_WIDTH",
    "count_chat",
    "count_text",
    "image_tokens",
    "needs_mask",
    "scan_chat",
)


cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch) nogil
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch) nogil
    bint Py_UNICODE_ISDECIMAL(Py_UCS4 ch) nogil
    bint PyUnicode_IS_ASCII(object o)
    bint PyUnicode_CheckExact(object o)


# Character classes, as Python's re sees them (see tokens_py).
cdef enum:
    LETTER = 0
    DIGIT = 1
    PUNCT = 2
    SPACE = 3
    NEWLINE = 4

cdef enum:
    TABLE_MAX = 32
    HAN_LO = 0x4E00
    HAN_HI = 0x9FFF
    HAN_BYTES = (0x9FFF - 0x4E00 + 1) / 8

cdef unsigned char ASCII_CLASS[128]

# The same classes as bits, for the pure-ASCII scan (letters split by case for humps).
cdef enum:
    F_LOWER = 1
    F_UPPER = 2
    F_LETTER = 3
    F_DIGIT = 4
    F_PUNCT = 8
    F_SPACE = 16
    F_NEWLINE = 32

cdef unsigned char ASCII_FLAGS[128]
# Price tables: entries 0..last, then the price per unit beyond last.
cdef long long WORD_SP[TABLE_MAX]
cdef long long WORD_NS[TABLE_MAX]
cdef long long PUNCT_PRICE[TABLE_MAX]
cdef Py_ssize_t WORD_SP_LAST, WORD_NS_LAST, PUNCT_LAST
cdef long long P_DIGITS, P_SPACE, P_SPACE_PER_CHAR, P_PREFIX_NO_WORD, P_HUMP, P_ALNUM_EDGE
cdef long long W_HAN, W_HAN_COMMON, W_KANA, W_HANGUL, W_CJK_PUNCT, W_UTF8_2, W_UTF8_3, W_UTF8_4
# Bit (c - HAN_LO) set: the ideograph c is one cl100k token.
cdef unsigned char HAN_COMMON_BITS[HAN_BYTES]


cdef Py_ssize_t _load_table(long long* dst, tuple src) except -1:
    cdef Py_ssize_t i, n = len(src)
    if n < 3 or n > TABLE_MAX:
        raise ValueError("price table size out of range")
    for i in range(n):
        dst[i] = src[i]
    return n - 2


cdef int _init() except -1:
    global WORD_SP_LAST, WORD_NS_LAST, PUNCT_LAST
    global P_DIGITS, P_SPACE, P_SPACE_PER_CHAR, P_PREFIX_NO_WORD, P_HUMP, P_ALNUM_EDGE
    global W_HAN, W_HAN_COMMON, W_KANA, W_HANGUL, W_CJK_PUNCT, W_UTF8_2, W_UTF8_3, W_UTF8_4
    cdef int i
    cdef unsigned int c
    for i in range(128):
        ch = chr(i)
        if ch in "\r\n":
            ASCII_CLASS[i] = NEWLINE
            ASCII_FLAGS[i] = F_NEWLINE
        elif ch.isspace():
            ASCII_CLASS[i] = SPACE
            ASCII_FLAGS[i] = F_SPACE
        elif ch.isdecimal():
            ASCII_CLASS[i] = DIGIT
            ASCII_FLAGS[i] = F_DIGIT
        elif ch.isalnum():
            ASCII_CLASS[i] = LETTER
            ASCII_FLAGS[i] = F_LOWER if ch.islower() else F_UPPER
        else:
            ASCII_CLASS[i] = PUNCT
            ASCII_FLAGS[i] = F_PUNCT
    WORD_SP_LAST = _load_table(WORD_SP, _py._WORD_SP)
    WORD_NS_LAST = _load_table(WORD_NS, _py._WORD_NS)
    PUNCT_LAST = _load_table(PUNCT_PRICE, _py._PUNCT)
    P_DIGITS = _py._DIGITS
    P_SPACE = _py._SPACE
    P_SPACE_PER_CHAR = _py._SPACE_PER_CHAR
    P_PREFIX_NO_WORD = _py._PREFIX_NO_WORD
    P_HUMP = _py._HUMP
    P_ALNUM_EDGE = _py._ALNUM_EDGE
    W_HAN = _py._HAN
    W_HAN_COMMON = _py._HAN_COMMON
    W_KANA = _py._KANA
    W_HANGUL = _py._HANGUL
    W_CJK_PUNCT = _py._CJK_PUNCT
    W_UTF8_2 = _py._UTF8_2
    W_UTF8_3 = _py._UTF8_3
    W_UTF8_4 = _py._UTF8_4
    memset(HAN_COMMON_BITS, 0, sizeof(HAN_COMMON_BITS))
    for ch in _py.HAN_COMMON:
        c = ord(ch)
        if c < HAN_LO or c > HAN_HI:
            raise ValueError("HAN_COMMON holds a character outside U+4E00..U+9FFF")
        HAN_COMMON_BITS[(c - HAN_LO) >> 3] |= 1 << ((c - HAN_LO) & 7)
    return 0


_init()


cdef inline int _cls(unsigned int c) noexcept nogil:
    if c < 128:
        return ASCII_CLASS[c]
    if Py_UNICODE_ISSPACE(c):
        return SPACE
    if Py_UNICODE_ISALNUM(c):
        return DIGIT if Py_UNICODE_ISDECIMAL(c) else LETTER
    return PUNCT


cdef inline long long _price(const long long* table, Py_ssize_t last, Py_ssize_t n) noexcept nogil:
    if n <= last:
        return table[n]
    return table[last] + (n - last) * table[last + 1]


cdef inline bint _ascii_letter(unsigned int c) noexcept nogil:
    return (c | 0x20) >= 97 and (c | 0x20) <= 122


cdef inline long long _non_ascii_weight(unsigned int c) noexcept nogil:
    if HAN_LO <= c <= HAN_HI:
        if HAN_COMMON_BITS[(c - HAN_LO) >> 3] & (1 << ((c - HAN_LO) & 7)):
            return W_HAN_COMMON
        return W_HAN
    if 0x3400 <= c <= 0x4DBF or 0xF900 <= c <= 0xFAFF or 0x20000 <= c <= 0x2FFFF:
        return W_HAN
    if 0x3040 <= c <= 0x30FF or 0x31F0 <= c <= 0x31FF or 0xFF66 <= c <= 0xFF9F:
        return W_KANA
    if 0x1100 <= c <= 0x11FF or 0x3130 <= c <= 0x318F or 0xAC00 <= c <= 0xD7AF:
        return W_HANGUL
    if 0x3000 <= c <= 0x303F or 0xFF00 <= c <= 0xFF65 or 0xFFE0 <= c <= 0xFFEF:
        return W_CJK_PUNCT
    if c <= 0x7FF:
        return W_UTF8_2
    if c >= 0x10000:
        return W_UTF8_4
    return W_UTF8_3


cdef inline Py_ssize_t _space_end(Py_ssize_t i, Py_ssize_t j, Py_ssize_t n, Py_ssize_t last_nl) noexcept nogil:
    # Where a whitespace piece that starts at i ends, given the end j of the whitespace
    # run and its last newline: to the end of the text; else through its last newline;
    # else all but the last space, which prefixes the next piece; else one space.
    if j == n:
        return n
    if last_nl >= 0:
        return last_nl + 1
    if j - i >= 2:
        return j - 1
    return i + 1


# One text's characters as stored (1, 2 or 4 bytes each): ``_units`` is compiled once per
# width, so its reads index the array instead of switching on the kind at every character.
ctypedef fused ucs_t:
    unsigned char
    unsigned short
    unsigned int


@cython.boundscheck(False)
@cython.wraparound(False)
cdef long long _units(const ucs_t* data, Py_ssize_t n) noexcept nogil:
    cdef long long units = 0
    cdef Py_ssize_t i, j, end, last_nl, ascii_count
    cdef unsigned int c, prev = 0, prefix
    cdef int k
    cdef bint has_prefix

    # Per character: camel humps, letter/digit edges, non-ASCII weights.
    for i in range(n):
        c = data[i]
        if c < 128:
            if 65 <= c <= 90:
                if 97 <= prev <= 122:
                    units += P_HUMP
                elif 48 <= prev <= 57:
                    units += P_ALNUM_EDGE
            elif 97 <= c <= 122:
                if 48 <= prev <= 57:
                    units += P_ALNUM_EDGE
            elif 48 <= c <= 57:
                if _ascii_letter(prev):
                    units += P_ALNUM_EDGE
        else:
            units += _non_ascii_weight(c)
        prev = c

    # Per piece of cl100k's pre-tokenizer (the regex _PIECE in tokens_py).
    i = 0
    while i < n:
        c = data[i]
        k = _cls(c)
        has_prefix = (
            (k == SPACE or k == PUNCT)
            and i + 1 < n
            and _cls(data[i + 1]) == LETTER
        )
        if k == LETTER or has_prefix:
            prefix = c
            j = i + 1 if has_prefix else i
            ascii_count = 0
            while j < n:
                c = data[j]
                if c < 128:
                    if ASCII_CLASS[c] != LETTER:
                        break
                    ascii_count += 1
                elif _cls(c) != LETTER:
                    break
                j += 1
            if ascii_count:
                if has_prefix and prefix == 32:
                    units += _price(WORD_SP, WORD_SP_LAST, ascii_count)
                else:
                    units += _price(WORD_NS, WORD_NS_LAST, ascii_count)
            elif has_prefix and prefix != 32 and prefix < 128:
                units += P_PREFIX_NO_WORD
            i = j
        elif k == DIGIT:
            j = i + 1
            while j < n and j < i + 3 and _cls(data[j]) == DIGIT:
                j += 1
            units += P_DIGITS
            i = j
        elif k == PUNCT or (
            c == 32 and i + 1 < n and _cls(data[i + 1]) == PUNCT
        ):
            j = i + 1 if c == 32 else i
            ascii_count = 0
            while j < n:
                c = data[j]
                if _cls(c) != PUNCT:
                    break
                if c < 128:
                    ascii_count += 1
                j += 1
            while j < n:
                c = data[j]
                if c != 10 and c != 13:
                    break
                j += 1
            units += _price(PUNCT_PRICE, PUNCT_LAST, ascii_count)
            i = j
        else:
            # Whitespace: to the end of the text; else through its last newline; else
            # all but the last space, which prefixes the next piece; else one space.
            j = i
            last_nl = -1
            while j < n:
                k = _cls(data[j])
                if k == NEWLINE:
                    last_nl = j
                elif k != SPACE:
                    break
                j += 1
            end = _space_end(i, j, n, last_nl)
            units += P_SPACE + P_SPACE_PER_CHAR * (end - i - 1)
            i = end
    return units

@cython.boundscheck(False)
@cython.wraparound(False)
cdef long long _ascii_units(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """``_units`` of a pure-ASCII text in one pass. No character is non-ASCII (no
    weights); a letter run's prefix is ASCII and followed by at least one ASCII letter
    (no ``P_PREFIX_NO_WORD``); camel humps only occur inside letter runs and letter/digit
    edges only at the ends of digit groups, so each is counted where its piece is scanned.

    ``s[n]`` is read: CPython ends every string's data with a NUL (``PyUnicode_AsUTF8``
    hands out this very buffer of an ASCII string as a C string), which is punctuation,
    so the letter, digit and whitespace loops stop there without testing ``j < n``."""
    cdef long long units = 0
    cdef Py_ssize_t i = 0, j, start, last_nl, end, humps = 0, edges = 0
    cdef unsigned int c, f, nf
    cdef bint space_prefix
    while i < n:
        c = s[i]
        f = ASCII_FLAGS[c]
        if f & F_LETTER:
            start = i
            space_prefix = False
        elif f & F_DIGIT:
            # A group of 1 to 3 digits; an ASCII letter before or after it is an edge.
            j = i + 1
            if ASCII_FLAGS[s[j]] & F_DIGIT:
                j += 1
                if ASCII_FLAGS[s[j]] & F_DIGIT:
                    j += 1
            units += P_DIGITS
            if i > 0 and ASCII_FLAGS[s[i - 1]] & F_LETTER:
                edges += 1
            if ASCII_FLAGS[s[j]] & F_LETTER:
                edges += 1
            i = j
            continue
        else:
            nf = ASCII_FLAGS[s[i + 1]]
            if f & (F_PUNCT | F_SPACE) and nf & F_LETTER:
                start = i + 1
                space_prefix = c == 32
            elif f & F_PUNCT or (c == 32 and i + 1 < n and nf & F_PUNCT):
                # Punctuation (after one optional space, not counted), then newlines.
                start = i + 1 if c == 32 else i
                j = i + 1
                while j < n and ASCII_FLAGS[s[j]] & F_PUNCT:
                    j += 1
                units += _price(PUNCT_PRICE, PUNCT_LAST, j - start)
                while ASCII_FLAGS[s[j]] & F_NEWLINE:
                    j += 1
                i = j
                continue
            else:
                # Whitespace: as in ``_units``.
                j = i
                last_nl = -1
                while True:
                    f = ASCII_FLAGS[s[j]]
                    if f & F_NEWLINE:
                        last_nl = j
                    elif not f & F_SPACE:
                        break
                    j += 1
                end = _space_end(i, j, n, last_nl)
                units += P_SPACE + P_SPACE_PER_CHAR * (end - i - 1)
                i = end
                continue
        # The letter run from start, as alternating streaks of capitals and lower-case
        # letters: a lower-case streak that ends on a capital is a hump.
        j = start
        while True:
            while ASCII_FLAGS[s[j]] == F_UPPER:
                j += 1
            while ASCII_FLAGS[s[j]] == F_LOWER:
                j += 1
            if ASCII_FLAGS[s[j]] != F_UPPER:
                break
            humps += 1
        if space_prefix:
            units += _price(WORD_SP, WORD_SP_LAST, j - start)
        else:
            units += _price(WORD_NS, WORD_NS_LAST, j - start)
        i = j
    return units + humps * P_HUMP + edges * P_ALNUM_EDGE


cdef inline long long _text_units(object text) noexcept:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef void* data = PyUnicode_DATA(text)
    # The GIL is kept: releasing it per call would let another thread take it and leave
    # the event loop waiting for it back (a prompt scans in microseconds).
    if PyUnicode_IS_ASCII(text):
        return _ascii_units(<const unsigned char*>data, n)
    cdef int kind = PyUnicode_KIND(text)
    if kind == 1:
        return _units(<const unsigned char*>data, n)
    if kind == 2:
        return _units(<const unsigned short*>data, n)
    return _units(<const unsigned int*>data, n)


cdef Py_ssize_t _count_text(object text) noexcept:
    # text: any str, subclasses included (every caller has checked isinstance(text, str))
    return <Py_ssize_t>((_text_units(text) + 999) // 1000)


def count_text(text):
    """Estimated ``cl100k_base`` token count of ``text`` (rounded up, biased high)."""
    if not isinstance(text, str):
        raise TypeError(f"count_text() expects str, not {type(text).__name__}")
    return _count_text(text)


# -- images ----------------------------------------------------------------------------

DEFAULT_IMAGE_WIDTH = _py.DEFAULT_IMAGE_WIDTH
DEFAULT_IMAGE_HEIGHT = _py.DEFAULT_IMAGE_HEIGHT
cdef Py_ssize_t IMAGE_BASE = _py._IMAGE_BASE
cdef Py_ssize_t IMAGE_TILE = _py._IMAGE_TILE


def image_tokens(width, height, detail="auto"):
    """OpenAI's tile formula for an image part of ``width`` x ``height`` pixels.

    ``low`` detail is a flat 85; otherwise the image is scaled to fit within 2048x2048,
    then so its shortest side is 768, and costs 85 + 170 per 512-pixel tile.
    """
    if detail == "low":
        return IMAGE_BASE
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
    return IMAGE_BASE + IMAGE_TILE * (-(-w // 512)) * (-(-h // 512))


# -- chat ------------------------------------------------------------------------------

cdef Py_ssize_t PER_MESSAGE = _py._PER_MESSAGE
cdef Py_ssize_t PER_NAME = _py._PER_NAME
cdef Py_ssize_t REPLY_PRIMING = _py._REPLY_PRIMING
cdef Py_ssize_t PER_TOOL_CALL = _py._PER_TOOL_CALL
cdef Py_ssize_t TOOLS_BLOCK = _py._TOOLS_BLOCK
cdef Py_ssize_t PER_TOOL = _py._PER_TOOL
cdef int MAX_DEPTH = _py._MAX_DEPTH
cdef Py_ssize_t AUDIO_B64_PER_TOKEN = _py._AUDIO_B64_PER_TOKEN
cdef Py_ssize_t FILE_B64_PER_TOKEN = _py._FILE_B64_PER_TOKEN
cdef Py_ssize_t DEFAULT_IMAGE = _py._DEFAULT_IMAGE
cdef object _dumps = _json.dumps


cdef Py_ssize_t _strings(object value, int depth=0) except -1:
    cdef Py_ssize_t total = 0
    if isinstance(value, str):
        return _count_text(value)
    if depth >= MAX_DEPTH:
        return 0
    if isinstance(value, dict):
        for key, item in (<dict>value).items():
            if key != "type":
                total += _strings(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            total += _strings(item, depth + 1)
    return total


cdef Py_ssize_t _json_tokens(object value) except -1:
    if isinstance(value, str):
        return _count_text(value)
    try:
        text = _dumps(value, ensure_ascii=False, default=str, skipkeys=True)
    except (TypeError, ValueError, RecursionError):
        return _strings(value)
    return _count_text(text)


cdef Py_ssize_t _b64_tokens(object value, Py_ssize_t per_token) except -1:
    if isinstance(value, str):
        return (len(<str>value) + per_token - 1) // per_token
    return 0


cdef Py_ssize_t _image_part(object image) except -1:
    if isinstance(image, dict) and (<dict>image).get("detail") == "low":
        return IMAGE_BASE
    return DEFAULT_IMAGE


cdef Py_ssize_t _part(object part) except -1:
    if not isinstance(part, dict):
        return _strings(part)
    kind = (<dict>part).get("type")
    if kind == "image_url":
        return _image_part((<dict>part).get("image_url"))
    if kind == "input_audio":
        audio = (<dict>part).get("input_audio")
        if isinstance(audio, dict):
            rest = {k: v for k, v in (<dict>audio).items() if k != "data"}
            return _strings(rest) + _b64_tokens((<dict>audio).get("data"), AUDIO_B64_PER_TOKEN)
        return _strings(audio)
    if kind == "file":
        file = (<dict>part).get("file")
        if isinstance(file, dict):
            rest = {k: v for k, v in (<dict>file).items() if k != "file_data"}
            return _strings(rest) + _b64_tokens((<dict>file).get("file_data"), FILE_B64_PER_TOKEN)
        return _strings(file)
    return _strings(part)


cdef Py_ssize_t _content(object content) except -1:
    cdef Py_ssize_t total = 0
    if isinstance(content, str):
        return _count_text(content)
    if isinstance(content, (list, tuple)):
        for part in content:
            total += _part(part)
        return total
    if isinstance(content, dict):
        return _part(content)
    return 0


cdef Py_ssize_t _function_call(object call) except -1:
    cdef Py_ssize_t total = PER_TOOL_CALL
    if not isinstance(call, dict):
        return _strings(call)
    name = (<dict>call).get("name")
    if isinstance(name, str):
        total += _count_text(name)
    if "arguments" in call:
        total += _json_tokens((<dict>call)["arguments"])
    return total


cdef Py_ssize_t _tool_calls(object calls) except -1:
    cdef Py_ssize_t total = 0
    if not isinstance(calls, (list, tuple)):
        return _strings(calls)
    for call in calls:
        if isinstance(call, dict) and "function" in call:
            total += _function_call((<dict>call)["function"])
        else:
            total += _function_call(call)
    return total


# The keys of a message that are counted their own way.
cdef enum:
    K_OTHER = 0
    K_CONTENT = 1
    K_TOOL_CALLS = 2
    K_FUNCTION_CALL = 3
    K_NAME = 4


cdef inline int _message_key(object key) noexcept:
    """Which special key a plain ``str`` is: compared by length and bytes, which is what
    ``==`` does for two ``str`` (``PyUnicode_Compare`` costs far more)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key)
    cdef const char* d
    if PyUnicode_KIND(key) != 1:
        return K_OTHER
    d = <const char*>PyUnicode_DATA(key)
    if n == 7:
        return K_CONTENT if memcmp(d, b"content", 7) == 0 else K_OTHER
    if n == 4:
        return K_NAME if memcmp(d, b"name", 4) == 0 else K_OTHER
    if n == 10:
        return K_TOOL_CALLS if memcmp(d, b"tool_calls", 10) == 0 else K_OTHER
    if n == 13:
        return K_FUNCTION_CALL if memcmp(d, b"function_call", 13) == 0 else K_OTHER
    return K_OTHER


cdef bint _has_image_part(list content) except -1:
    for part in content:
        if isinstance(part, dict):
            kind = (<dict>part).get("type")
            if kind == "image_url" or kind == "input_image":
                return True
    return False


cdef Py_ssize_t _message(object message, bint* vision) except -1:
    """Tokens of one message. With ``vision`` (scan_chat), also sets ``vision[0]`` when
    the message's content is a list with an image part, as ``_needs_mask`` finds it."""
    cdef Py_ssize_t total = PER_MESSAGE
    cdef int k
    cdef bint content_seen = False, other_keys = False
    if not isinstance(message, dict):
        return total + _strings(message)
    for key, value in (<dict>message).items():
        if PyUnicode_CheckExact(key):
            k = _message_key(key)
            if k == K_CONTENT:
                content_seen = True
                if vision != NULL and not vision[0] and isinstance(value, list):
                    vision[0] = _has_image_part(<list>value)
                total += _content(value)
            elif k == K_TOOL_CALLS:
                total += _tool_calls(value)
            elif k == K_FUNCTION_CALL:
                total += _function_call(value)
            elif isinstance(value, str):
                total += _count_text(value)
                if k == K_NAME:
                    total += PER_NAME
        else:
            # Not a plain str: compared by ==, as the twin does.
            other_keys = True
            if key == "content":
                total += _content(value)
            elif key == "tool_calls":
                total += _tool_calls(value)
            elif key == "function_call":
                total += _function_call(value)
            elif isinstance(value, str):
                total += _count_text(value)
                if key == "name":
                    total += PER_NAME
    if vision != NULL and not vision[0] and not content_seen and other_keys:
        # No plain "content" key, but another may equal it: look it up as needs_mask does.
        content = (<dict>message).get("content")
        if isinstance(content, list):
            vision[0] = _has_image_part(<list>content)
    return total


cdef Py_ssize_t _tool(object tool) except -1:
    cdef Py_ssize_t total = PER_TOOL
    if not isinstance(tool, dict):
        return total + _strings(tool)
    function = (<dict>tool).get("function")
    if not isinstance(function, dict):
        return total + _strings(tool)
    for key, value in (<dict>function).items():
        if key == "parameters":
            total += _json_tokens(value)
        elif isinstance(value, str):
            total += _count_text(value)
    return total


def count_chat(messages, tools=None):
    """Estimated prompt tokens of a chat-completions ``messages`` list and its ``tools``."""
    return _count_chat(messages, tools, NULL)


cdef Py_ssize_t _count_chat(object messages, object tools, bint* vision) except -1:
    cdef Py_ssize_t total = REPLY_PRIMING
    if isinstance(messages, (list, tuple)):
        for message in messages:
            total += _message(message, vision)
    if isinstance(tools, (list, tuple)) and tools:
        total += TOOLS_BLOCK
        for tool in tools:
            total += _tool(tool)
    return total


# -- what a chat request needs (see tokens_py.needs_mask) -------------------------------

cdef int _needs_mask(dict req, object tools, bint vision) except -1:
    # tools: req.get("tools"); vision: whether a message's content list has an image part
    cdef int mask = 1 if (tools or req.get("functions")) else 0
    if vision:
        mask |= 2
    fmt = req.get("response_format")
    if isinstance(fmt, dict) and (<dict>fmt).get("type") == "json_schema":
        mask |= 4
    if req.get("stream") is True:
        mask |= 8
    return mask


cdef bint _vision(object messages) except -1:
    if isinstance(messages, (list, tuple)):
        for m in messages:
            content = (<dict>m).get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and _has_image_part(<list>content):
                return True
    return False


def needs_mask(dict req):
    """What a (validated) chat request needs, as bits (see ``tokens_py.needs_mask``)."""
    tools = req.get("tools")
    return _needs_mask(req, tools, _vision(req.get("messages")))


def scan_chat(dict req):
    """``(prompt tokens, needs_mask)`` of a chat request, in one call: the messages are
    walked once, for their tokens and for image parts."""
    cdef bint vision = False
    messages = req.get("messages")
    tools = req.get("tools")
    cdef Py_ssize_t total = _count_chat(messages if messages else [], tools, &vision)
    return total, _needs_mask(req, tools, vision)
