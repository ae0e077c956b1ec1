"""Leading verb and its object: a light heuristic for the paper's Figure 2 idea.

The paper parsed instructions with the Berkeley Neural Parser; downloading a parser model
is out of the question here, so this takes the first word after a leading clause
("Given a list, ...", "As a teacher, ...") and politeness ("Please", "Can you"), keeps
it when it reads as an imperative verb, and takes the first following word that is not a
determiner, number or common modifier as its object. It is wrong sometimes, and says so
in the report; it is right often enough to show what a run is made of.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_POLITE = {"please", "kindly", "now", "then", "also", "just", "briefly", "quickly"}
_QUESTION_STARTS = {
    "can", "could", "would", "will", "what", "how", "why", "who", "when", "where", "which",
    "is", "are", "do", "does", "did", "should", "i", "you", "we", "my", "the", "a", "an",
    "this", "there", "it", "in", "on", "for", "if", "as", "given", "based", "using", "from",
    "here", "to", "with", "after", "before", "imagine", "suppose",
}
_SKIP_OBJECT = {
    "a", "an", "the", "some", "any", "this", "that", "these", "those", "my", "your", "our",
    "their", "his", "her", "its", "me", "us", "them", "him", "it", "one", "two", "three",
    "four", "five", "six", "seven", "eight", "nine", "ten", "few", "several", "many", "short",
    "brief", "simple", "new", "good", "list", "up", "out", "down", "each", "every", "all",
    "following", "given", "more", "most", "best", "main", "key", "small", "quick", "funny",
    "creative", "detailed", "clear", "concise", "how", "what", "why", "whether", "if", "of",
    "to", "for", "about", "with", "and", "or", "in", "on", "at", "by", "from", "into",
}
_NOT_VERBS = _QUESTION_STARTS | _SKIP_OBJECT
_ADJECTIVE_ENDINGS = ("ful", "ous", "ive", "ical", "able", "ible", "less", "ish", "est")
_ADJECTIVES = {"heartfelt", "formal", "informal", "casual", "polite", "friendly", "short",
               "long", "personal", "professional", "original", "fictional", "interesting",
               "practical", "typical", "basic", "daily", "weekly", "catchy", "witty"}


def _strip_leading_clause(text: str) -> str:
    """Drop an introductory clause ending in a comma within the first 12 words."""
    head, sep, tail = text.partition(",")
    first = head.strip().split(" ", 1)[0].lower() if head.strip() else ""
    if sep and len(head.split()) <= 12 and first in {"given", "as", "if", "for", "using",
                                                     "based", "in", "from", "after",
                                                     "before", "when", "with"}:
        return tail
    return text


def verb_object(instruction: str) -> tuple[str | None, str | None]:
    """(leading verb, its object) in lower case; (None, None) when it is not imperative."""
    words = [w.lower() for w in _WORD.findall(_strip_leading_clause(instruction)[:400])]
    while words and words[0] in _POLITE:
        words = words[1:]
    if not words or words[0] in _NOT_VERBS or len(words[0]) < 2:
        return None, None
    verb = words[0]
    for word in words[1:6]:
        if word not in _SKIP_OBJECT and len(word) > 1 and not _modifier(word):
            return verb, word
    return verb, None


def _modifier(word: str) -> bool:
    """Reads as an adjective or a compound modifier ("heartfelt", "two-paragraph")."""
    if "-" in word or word in _ADJECTIVES:
        return True
    return any(word.endswith(end) and len(word) >= len(end) + 4 for end in _ADJECTIVE_ENDINGS)
