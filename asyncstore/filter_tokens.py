"""Tokenizer for search filter and order-by strings (see :mod:`asyncstore.filters`).

Tokens are words (identifiers and keywords), backquoted keys, quoted strings,
numbers, comparators, parentheses and commas, each with its span in the input so
that errors can point at it.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from asyncstore.errors import InvalidParameter


class TokenKind(str, enum.Enum):
    """Kinds of lexical tokens."""

    WORD = "word"  # bare identifier or keyword: letters, digits, _, .
    BACKQUOTED = "backquoted"  # `key with spaces`
    STRING = "string"  # 'value' or "value" (also a key after a prefix)
    NUMBER = "number"
    OPERATOR = "operator"  # = != > >= < <=
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","


@dataclasses.dataclass(frozen=True)
class Token:
    """A lexical token: kind, decoded text, and its [start, end) span in the input."""

    kind: TokenKind
    text: str
    start: int
    end: int
    quote: str = ""
    """For STRING tokens, the quote character used (' or ")."""


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.])")
_OPERATORS = (">=", "<=", "!=", "=", ">", "<")


def syntax_error(text: str, position: int, message: str) -> InvalidParameter:
    near = text[position : position + 20] if position < len(text) else "<end of input>"
    return InvalidParameter(f"invalid search string at position {position} (near {near!r}): {message}")


def tokenize(text: str) -> list[Token]:
    """Split a filter or order-by string into tokens.

    Raises:
        InvalidParameter: an unterminated quote or a character that cannot start a token.
    """
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "'\"":
            value, end = read_quoted(text, i)
            tokens.append(Token(TokenKind.STRING, value, i, end, quote=ch))
            i = end
            continue
        if ch == "`":
            close = text.find("`", i + 1)
            if close < 0:
                raise syntax_error(text, i, "unterminated backquote; close the key with `")
            if close == i + 1:
                raise syntax_error(text, i, "empty backquoted key ``")
            tokens.append(Token(TokenKind.BACKQUOTED, text[i + 1 : close], i, close + 1))
            i = close + 1
            continue
        if ch in "(),":
            kind = {"(": TokenKind.LPAREN, ")": TokenKind.RPAREN, ",": TokenKind.COMMA}[ch]
            tokens.append(Token(kind, ch, i, i + 1))
            i += 1
            continue
        number = _NUMBER.match(text, i)
        if number:
            tokens.append(Token(TokenKind.NUMBER, number.group(), i, number.end()))
            i = number.end()
            continue
        word = _WORD.match(text, i)
        if word:
            tokens.append(Token(TokenKind.WORD, word.group(), i, word.end()))
            i = word.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(Token(TokenKind.OPERATOR, op, i, i + len(op)))
                i += len(op)
                break
        else:
            raise syntax_error(
                text,
                i,
                f"unexpected character {ch!r}; expected an identifier, a quoted string, a number, "
                "a comparator (= != > >= < <=), a parenthesis or a comma",
            )
    return tokens


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Decode a quoted string starting at ``start``; a quote is escaped by doubling it
    or with a backslash. Returns the value and the index after the closing quote."""
    quote = text[start]
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in (quote, "\\"):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise syntax_error(text, start, f"unterminated string; close it with {quote}")


__all__ = ["Token", "TokenKind", "read_quoted", "syntax_error", "tokenize"]
