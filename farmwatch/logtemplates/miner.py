"""The template miner: which *kind* of message a log line is, online, one configuration for every log.

A message is cut into tokens at white space and at the punctuation that separates a key from its
value (``=,:;()[]{}<>"'&?|``); a token with a digit in it is a variable, and so is a whole word that
is a path or URL with a digit (``/v2/54fa…/servers``), and neighbouring variables are one. Messages
with the same number of tokens and the same first token are compared with the clusters already
known (Drain's idea: He et al., ICWS 2017): the share of a cluster's fixed positions whose word the
message has is its similarity, and at ``similarity`` or more the message joins the best cluster,
else it starts a new one. A cluster remembers, per position, the words it has seen there: up to
``max_words`` of them the position is part of the template (``VM Started`` and ``VM Paused`` are
two templates of one cluster); with more it is a variable (user names, module names), as Brain
does with word frequencies per column (Yu et al., ICSE 2023) — but online, so a service can give
every record its template as it reads it.

A template is the message with its variable parts replaced by ``<*>``; its id is a hash of that
text, so the same kind of message gets the same id in every process that knows the same clusters
(``farmwatch.logtemplates.store`` shares them through the store). No rule names a system or a
format: measured on eight labelled systems of Loghub (``benchmarks/bench_log_templates.py``).

Speed: the whole mining of a message depends only on where its digits are, not on their values,
so results are cached by the message's bytes with every digit made ``0`` (one C call); a log's
records mostly hit the cache and cost a dictionary look-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

__all__ = ["Cluster", "Template", "TemplateMiner", "VARIABLE", "template_id", "tokenize"]

VARIABLE = "<*>"
_PUNCT = r"=,:;()\[\]{}<>\"'&?|"
_PART = re.compile(r"[^\s" + _PUNCT + r"]+")
_WORD = re.compile(r"\S+")
_DIGIT = re.compile(r"\d")
_PATH = re.compile(r"(?:[A-Za-z][\w+.-]*://|/|~/|\./)")
_COLLAPSE = re.compile(r"<\*>(?:[\s" + _PUNCT + r"]*<\*>)+")
_SPACES = re.compile(r"\s+")
ZEROS = bytes.maketrans(b"0123456789", b"0000000000")
MAX_CHARS = 2000
"""Messages are mined on their first this many characters (and a multi-line one on its first and
last line: a Python traceback's exception is its last line)."""


class Template(NamedTuple):
    """A message's template: ``id`` (16 hex digits, a hash of ``text``) and ``text``."""

    id: str
    text: str


def template_id(text: str) -> str:
    """The id of a template text: the same text gives the same id everywhere, always."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def mined_text(message: str) -> str:
    """The part of a message the miner looks at: capped, and first + last line of a multi-line one."""
    if "\n" in message:
        lines = message.split("\n")
        message = lines[0] + "\n" + lines[-1] if len(lines) > 1 else lines[0]
    return message[:MAX_CHARS]


def tokenize(message: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens (``VARIABLE`` for variables) and their spans in ``message``."""
    tokens: list[str] = []
    spans: list[tuple[int, int]] = []
    for w in _WORD.finditer(message):
        word = w.group()
        start = w.start()
        if _DIGIT.search(word) and _PATH.match(word):
            parts: Iterable[tuple[int, int, str]] = ((start, w.end(), word),)
        else:
            parts = ((start + p.start(), start + p.end(), p.group()) for p in _PART.finditer(word))
        for a, b, part in parts:
            if _DIGIT.search(part):
                if tokens and tokens[-1] is VARIABLE:
                    spans[-1] = (spans[-1][0], b)  # neighbouring variables are one
                    continue
                tokens.append(VARIABLE)
            else:
                tokens.append(part)
            spans.append((a, b))
    return tokens, spans


@dataclass(eq=False)
class Cluster:
    """Messages of one shape: per position None (a variable) or the words seen there."""

    id: str
    bucket: tuple[int, str]
    words: list[set[str] | None]
    dirty: bool = True
    """Changed since the store last saw it."""

    def state(self) -> list[list[str] | None]:
        return [None if w is None else sorted(w) for w in self.words]


def _bucket(tokens: list[str]) -> tuple[int, str]:
    return len(tokens), tokens[0] if tokens else ""


@dataclass
class TemplateMiner:
    """Online template mining (see the module doc). Not thread-safe: one per source.

    ``template_of(message)`` learns from the message and returns its template; ``match`` only
    looks. ``new`` collects the templates met for the first time (``TemplateStore`` registers
    them), ``generalized`` those that only generalise templates already known.
    """

    similarity: float = 0.6
    max_words: int = 4
    cache_size: int = 100_000
    buckets: dict[tuple[int, str], list[Cluster]] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    """Template ids already registered (here or in the store)."""
    new: dict[str, tuple[Template, str, bool]] = field(default_factory=dict)
    """Templates met for the first time since the last ``take_new``: id → (template, cluster id,
    generalised: it only makes variable a position of templates already known)."""
    _cache: dict[bytes, tuple[Template, Cluster]] = field(default_factory=dict)

    # -- the pipeline's call --------------------------------------------------------------------
    def template_of(self, message: str) -> Template:
        """Learn from ``message`` and return its template (cached by the digit-blind message)."""
        text = mined_text(message) if ("\n" in message or len(message) > MAX_CHARS) else message
        key = text.encode("utf-8", "surrogatepass").translate(ZEROS)
        hit = self._cache.get(key)
        if hit is not None:
            return hit[0]
        tokens, spans = tokenize(text)
        cluster, created, added = self._learn(tokens)
        template = self._render(text, tokens, spans, cluster)
        if template.id not in self.known:
            self.known.add(template.id)
            self.new[template.id] = (template, cluster.id, not (created or added))
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = (template, cluster)
        return template

    def match(self, message: str) -> Template:
        """The template of ``message`` as the miner knows it now, learning nothing."""
        text = mined_text(message)
        tokens, spans = tokenize(text)
        cluster, score = self._best(tokens)
        return self._render(text, tokens, spans, cluster if score >= self.similarity else None)

    def take_new(self) -> dict[str, tuple[Template, str, bool]]:
        new, self.new = self.new, {}
        return new

    # -- clusters -------------------------------------------------------------------------------
    def _best(self, tokens: list[str]) -> tuple[Cluster | None, float]:
        """The most similar cluster; of equally similar ones the most general, then the smallest
        id, so that every process that knows the same clusters picks the same one."""
        best, rank = None, (-1.0, 0, "")
        for cluster in self.buckets.get(_bucket(tokens), ()):
            fixed = same = 0
            for words, token in zip(cluster.words, tokens):
                if words is not None:
                    fixed += 1
                    if token in words:
                        same += 1
            score = same / fixed if fixed else 1.0
            if (score, -fixed) > rank[:2] or ((score, -fixed) == rank[:2] and cluster.id < rank[2]):
                best, rank = cluster, (score, -fixed, cluster.id)
        return best, rank[0]

    def _learn(self, tokens: list[str]) -> tuple[Cluster, bool, bool]:
        """The message's cluster after learning from it; (cluster, created, a word was added)."""
        cluster, score = self._best(tokens)
        if cluster is None or score < self.similarity:
            bucket = _bucket(tokens)
            words = [None if t is VARIABLE else {t} for t in tokens]
            cid = template_id("\0".join(tokens))
            cluster = Cluster(cid, bucket, words)  # type: ignore[arg-type]
            self.add_cluster(cluster)
            return cluster, True, False
        added = flipped = False
        for i, token in enumerate(tokens):
            words = cluster.words[i]
            if words is None or token in words:
                continue
            if token is VARIABLE or len(words) >= self.max_words:
                cluster.words[i] = None
                flipped = True
            else:
                words.add(token)
                added = True
        if added or flipped:
            cluster.dirty = True
        if flipped:
            self._cache.clear()  # messages cached with the old words of this position change template
        return cluster, False, added and not flipped

    def add_cluster(self, cluster: Cluster) -> None:
        """A cluster made here or loaded from the store (an id known already is merged into)."""
        known = self.clusters.get(cluster.id)
        if known is not None:
            self.merge(known, cluster.words)
            return
        self.clusters[cluster.id] = cluster
        self.buckets.setdefault(cluster.bucket, []).append(cluster)

    def merge(self, cluster: Cluster, words: list[set[str] | None]) -> bool:
        """Another process's words for the same cluster: the union (a CRDT: order does not matter).

        Returns whether this cluster changed."""
        changed = False
        for i, theirs in enumerate(words[:len(cluster.words)]):
            ours = cluster.words[i]
            if ours is None:
                continue
            if theirs is None or len(ours | theirs) > self.max_words:
                cluster.words[i] = None
                changed = True
                self._cache.clear()
            elif not theirs <= ours:
                ours |= theirs
                changed = True
        return changed

    # -- text -----------------------------------------------------------------------------------
    def _render(self, text: str, tokens: list[str], spans: list[tuple[int, int]], cluster: Cluster | None) -> Template:
        out: list[str] = []
        pos = 0
        words = cluster.words if cluster is not None else None
        for i, token in enumerate(tokens):
            if token is VARIABLE or (words is not None and words[i] is None):
                a, b = spans[i]
                out.append(text[pos:a])
                out.append(VARIABLE)
                pos = b
        out.append(text[pos:])
        rendered = _SPACES.sub(" ", _COLLAPSE.sub(VARIABLE, "".join(out))).strip()
        return Template(template_id(rendered), rendered)

    def templates(self, messages: list[str]) -> list[Template]:
        """Learn from all of ``messages``, then the template of each as the miner knows it at the
        end (the settled templates; ``farmwatch.analysis.log_templates``)."""
        for m in messages:
            self.template_of(m)
        settled: dict[bytes, Template] = {}  # as in template_of: the result depends on the digits' places only
        out = []
        for m in messages:
            key = mined_text(m).encode("utf-8", "surrogatepass").translate(ZEROS)
            t = settled.get(key)
            if t is None:
                t = settled[key] = self.match(m)
            out.append(t)
        return out
