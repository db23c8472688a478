"""A judge that asks a (reasoning) language model over HTTP.

Two wire formats are spoken, both with the standard library only:

* ``api="openai"``: any OpenAI-compatible ``/chat/completions`` server (OpenAI itself,
  vLLM, Ollama, llama.cpp, ...);
* ``api="anthropic"``: the Anthropic messages API (``/v1/messages``).

`compare` asks the question twice with the predictions swapped, because LLM judges
are known to favour one position; when the two orders disagree the more cautious
verdict is kept with a lower confidence.

Replies are parsed defensively (strict JSON first, then an anchored ``Verdict: X``
line); a reply we cannot read becomes the ``error`` outcome rather than a guess.
The API key is kept out of every message, verdict, ``describe()`` and ``repr``.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from wmg.judges.base import Judge, JudgeError, Verdict
from wmg.parse import CANONICAL_LABELS

# --- prompts ----------------------------------------------------------------------
# Any change to these texts changes `prompt_hash`, so judgments made with an older
# prompt can be told apart from new ones.

SYSTEM_PROMPT = (
    "You are a careful judge of outputs from small language models that were fine-tuned "
    'to spot "weird machine gadgets" in excerpts of PLC (programmable logic controller) '
    "manuals. Each output names a gadget type, a location and an explanation, in the form\n"
    "gadget_type: <label>; location: <where>; explanation: <why>\n"
    "The gadget types of this project are:\n"
    + "".join(f"- {label}\n" for label in CANONICAL_LABELS)
    + "You judge what outputs mean, not how they are worded. "
    'Reply with strict JSON only: {"verdict": "...", "explanation": "..."}.'
)

_VERDICT_CHOICES = (
    "Choose exactly one verdict:\n"
    "- FULL_AGREEMENT: same meaning, even if worded differently.\n"
    '- PARTIAL_AGREEMENT: same category but different specificity (e.g. "BOOL tag" vs '
    '"ReadWrite gadget").\n'
    "- DISAGREEMENT: different concepts.\n"
    "- INVALID: {invalid_who} garbled, repetitive or missing the gadget type.\n"
    "\n"
    "Reply with strict JSON only, no other text:\n"
    '{{"verdict": "FULL_AGREEMENT | PARTIAL_AGREEMENT | DISAGREEMENT | INVALID", '
    '"explanation": "<one sentence>"}}'
)

# Templates are filled with str.format; the predictions are substituted values, so
# braces inside them are harmless. Literal braces in the templates are doubled.
COMPARE_TEMPLATE = (
    "Two model predictions for the same manual excerpt are given below, together with "
    "the gold (reference) output for that excerpt.\n"
    "\n"
    "Gold output:\n<<<\n{gold}\n>>>\n"
    "\n"
    "Prediction A:\n<<<\n{a}\n>>>\n"
    "\n"
    "Prediction B:\n<<<\n{b}\n>>>\n"
    "\n"
    "Do Prediction A and Prediction B agree with each other? Use the gold output as "
    "context for what the excerpt is about, but judge A against B.\n"
    + _VERDICT_CHOICES.replace("{invalid_who}", "one or both predictions are")
)

GOLD_TEMPLATE = (
    "A model prediction for a manual excerpt is given below, together with the gold "
    "(reference) output for that excerpt.\n"
    "\n"
    "Gold output:\n<<<\n{gold}\n>>>\n"
    "\n"
    "Prediction:\n<<<\n{prediction}\n>>>\n"
    "\n"
    "Does the prediction agree with the gold output?\n"
    + _VERDICT_CHOICES.replace("{invalid_who}", "the prediction is")
)

PROMPT_HASH = hashlib.sha256(
    "\n\x00\n".join((SYSTEM_PROMPT, COMPARE_TEMPLATE, GOLD_TEMPLATE)).encode("utf-8")
).hexdigest()

# --- reply parsing ----------------------------------------------------------------

# Words a reply may use for each verdict (compared after upper-casing and turning
# spaces/hyphens into underscores).
_WORDS = {
    "FULL_AGREEMENT": "full",
    "FULL": "full",
    "PARTIAL_AGREEMENT": "partial",
    "PARTIAL": "partial",
    "DISAGREEMENT": "disagreement",
    "INVALID": "invalid",
}

# Decoration a model may put around an anchored verdict: markdown bold/headings,
# list bullets, quotes, backticks.
_DECOR = r"[\s*#>`\"'\-]*"
# "Verdict: partial agreement" (any case, the label makes the intent unambiguous) ...
_LABELLED = re.compile(
    rf"^{_DECOR}verdict{_DECOR}[:=]{_DECOR}"
    r"(?P<word>full[ _]agreement|partial[ _]agreement|disagreement|invalid|full|partial)\b",
    re.IGNORECASE,
)
# ... or a line that *starts* with one of the four upper-case verdict words. Only the
# exact words count, so prose such as "Invalid inputs were..." is not read as one.
_BARE = re.compile(rf"^{_DECOR}(?P<word>FULL_AGREEMENT|PARTIAL_AGREEMENT|DISAGREEMENT|INVALID)\b")

# Reasoning models served by vLLM & co. may put their chain of thought in the content;
# what is thought aloud there ("Verdict: FULL? no...") is not the answer.
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_MAX_EXPLANATION = 300

# The order used when two verdicts must be reduced to one: the more cautious wins.
_CAUTION = {"invalid": 3, "disagreement": 2, "partial": 1, "full": 0}


def _verdict_word(value) -> str | None:
    if not isinstance(value, str):
        return None
    return _WORDS.get(re.sub(r"[\s\-]+", "_", value.strip()).upper())


def _one_sentence(text: str) -> str:
    """Collapse whitespace, keep the first sentence, at most 300 characters."""
    text = " ".join(text.split())
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(text) > _MAX_EXPLANATION:
        text = text[: _MAX_EXPLANATION - 1].rstrip() + "…"
    return text


def _json_objects(text: str):
    """The whole text as JSON, then every {...} object that decodes, in order."""
    try:
        yield json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        yield obj


def parse_reply(text: str | None) -> tuple[str, str] | None:
    """(verdict, explanation) read from a judge's reply, or None when it cannot be read.

    1. strict JSON: the whole reply or the first {...} object carrying a "verdict"
       (so ```json fences and a sentence around the object are fine);
    2. otherwise an anchored verdict: a line starting with "Verdict: X" or with one of
       the upper-case words FULL_AGREEMENT, PARTIAL_AGREEMENT, DISAGREEMENT, INVALID.
       If such lines name different verdicts the reply is ambiguous -> None.

    A verdict word somewhere in prose is never taken as the answer.
    """
    if not isinstance(text, str):
        return None
    text = _THINK.sub("", text).strip()
    if not text:
        return None

    for obj in _json_objects(text):
        if isinstance(obj, dict) and "verdict" in obj:
            verdict = _verdict_word(obj["verdict"])
            if verdict is None:
                # A JSON answer with a verdict we do not know ("MAYBE", the template's
                # "A | B | C" echoed back): do not look further for something to guess.
                return None
            explanation = obj.get("explanation")
            return verdict, _one_sentence(explanation if isinstance(explanation, str) else "")

    found: list[tuple[str, str]] = []  # (verdict, rest of its line)
    lines = text.splitlines()
    for line in lines:
        match = _LABELLED.match(line) or _BARE.match(line)
        if match:
            found.append((_verdict_word(match.group("word")), line[match.end():]))
    if not found or len({verdict for verdict, _ in found}) > 1:
        return None
    verdict, rest = found[0]
    # The explanation: what follows the verdict on its line ("INVALID - B repeats
    # itself"), else the other lines of the reply.
    rest = rest.strip(" \t*`\"'.:;,-–—")
    if not rest:
        rest = " ".join(line for line in lines if not (_LABELLED.match(line) or _BARE.match(line)))
    return verdict, _one_sentence(rest)


# --- the judge --------------------------------------------------------------------

_APIS = {
    # api: (base-url variable, default base url, key variable)
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
}
_ANTHROPIC_VERSION = "2023-06-01"
_ANTHROPIC_MAX_TOKENS = 300


@dataclass(frozen=True)
class _Reply:
    """What one request gave back: the reply text, or None when the 200 body did not
    have the expected structure (then `raw` is the body, for the error message)."""

    text: str | None
    raw: str

    def snippet(self) -> str:
        return (self.text if self.text is not None else self.raw)[:200]


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; `cause` is a one-line reason."""

    def __init__(self, cause: str, unreachable: bool):
        super().__init__(cause)
        self.cause = cause
        self.unreachable = unreachable  # no HTTP answer at all (vs. a 429/5xx answer)


class LLMJudge(Judge):
    """Judge with an LLM behind an OpenAI-compatible or Anthropic HTTP API.

    Arguments left as None come from the environment: OPENAI_BASE_URL /
    OPENAI_API_KEY or ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY, and WMG_JUDGE_MODEL.
    The key is optional (local servers need none). `retries` is the total number of
    attempts per request; between attempts we sleep ``backoff * 2**attempt``.
    `sleep` is injectable so tests need not wait.
    """

    name = "llm"
    version = "1"

    def __init__(
        self,
        api: str = "openai",
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        sleep=time.sleep,
    ):
        api = (api or "openai").lower()
        if api not in _APIS:
            raise JudgeError(f"unknown judge API {api!r}: use one of {', '.join(sorted(_APIS))}")
        url_var, default_url, key_var = _APIS[api]
        self.api = api
        # `or`, not a default in .get: an empty variable counts as unset.
        self.base_url = (base_url or os.environ.get(url_var) or default_url).rstrip("/")
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise JudgeError(f"judge base URL {self._display_url(self.base_url)!r} must start with http:// or https://")
        self.model = model or os.environ.get("WMG_JUDGE_MODEL") or None
        if not self.model:
            raise JudgeError("no judge model: give --judge-model or set WMG_JUDGE_MODEL")
        self._api_key = api_key or os.environ.get(key_var) or None
        self.timeout = timeout
        self.retries = max(1, int(retries))
        self.backoff = backoff
        self._sleep = sleep
        self.prompt_hash = PROMPT_HASH
        path = "/chat/completions" if api == "openai" else "/v1/messages"
        self.url = self.base_url + path

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return (
            f"LLMJudge(api={self.api!r}, base_url={self._display_url(self.base_url)!r}, "
            f"model={self.model!r}, api_key={key})"
        )

    # -- the two questions -----------------------------------------------------

    def compare(self, a: str, b: str, gold: str) -> Verdict:
        """Ask with (A=a, B=b) and with (A=b, B=a); combine the two answers."""
        first = self._ask(COMPARE_TEMPLATE.format(gold=_show(gold), a=_show(a), b=_show(b)))
        second = self._ask(COMPARE_TEMPLATE.format(gold=_show(gold), a=_show(b), b=_show(a)))
        p1, p2 = parse_reply(first.text), parse_reply(second.text)

        if p1 and p2:
            (v1, e1), (v2, e2) = p1, p2
            if v1 == v2:
                return self._verdict(v1, e1, 0.9)
            cautious = max(v1, v2, key=_CAUTION.__getitem__)
            explanation = (
                f"the two orders disagreed: order (a, b) said {v1} ({e1 or 'no explanation'}); "
                f"order (b, a) said {v2} ({e2 or 'no explanation'}); kept the more cautious {cautious}"
            )
            return self._verdict(cautious, explanation, 0.5)
        if p1:
            note = "(the swapped order gave no readable verdict)"
            return self._verdict(p1[0], f"{p1[1]} {note}".lstrip(), 0.4)
        if p2:
            # Its "A" and "B" refer to the swapped order: say so.
            note = "(asked with the predictions swapped; the other order gave no readable verdict)"
            return self._verdict(p2[0], f"{p2[1]} {note}".lstrip(), 0.4)
        return self._verdict("error", f"unparseable reply: {first.snippet()}", 0.0)

    def against_gold(self, prediction: str, gold: str) -> Verdict:
        reply = self._ask(GOLD_TEMPLATE.format(gold=_show(gold), prediction=_show(prediction)))
        parsed = parse_reply(reply.text)
        if parsed is None:
            return self._verdict("error", f"unparseable reply: {reply.snippet()}", 0.0)
        return self._verdict(parsed[0], parsed[1], 0.8)

    # -- plumbing ----------------------------------------------------------------

    def _verdict(self, verdict: str, explanation: str, confidence: float) -> Verdict:
        return Verdict(verdict, self._scrub(explanation), confidence)

    def _scrub(self, text: str) -> str:
        """Belt and braces: a server may echo the key back (in an error body, say)."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    @staticmethod
    def _display_url(url: str) -> str:
        """The URL without any user:password@ part."""
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _request_body(self, prompt: str) -> tuple[dict, dict]:
        """(JSON body, headers) for one question in this judge's API."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api == "openai":
            body = {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                "temperature": 0,
            }
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
        else:
            body = {
                "model": self.model,
                "max_tokens": _ANTHROPIC_MAX_TOKENS,
                "system": SYSTEM_PROMPT,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
            }
            headers["anthropic-version"] = _ANTHROPIC_VERSION
            if self._api_key:
                headers["x-api-key"] = self._api_key
        return body, headers

    def _reply_text(self, payload) -> str | None:
        """The reply text inside a 200 response's JSON, or None if it is not there."""
        try:
            if self.api == "openai":
                content = payload["choices"][0]["message"]["content"]
                if isinstance(content, list):  # some servers send content parts
                    content = "".join(_texts(content))
                return content if isinstance(content, str) else None
            blocks = payload["content"]
            if not isinstance(blocks, list):
                return None
            texts = _texts(blocks)
            return "".join(texts) if texts else None
        except (KeyError, IndexError, TypeError):
            return None

    def _ask(self, prompt: str) -> _Reply:
        """POST one question, retrying transient failures; JudgeError when hopeless."""
        body, headers = self._request_body(prompt)
        data = json.dumps(body).encode("utf-8")
        shown = self._display_url(self.url)
        last: _Retryable | None = None
        for attempt in range(self.retries):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                raw = self._post_once(data, headers, shown)
            except _Retryable as exc:
                last = exc
                continue
            try:
                payload = json.loads(raw)
            except ValueError:
                return _Reply(None, self._scrub(raw))
            return _Reply(self._reply_text(payload), self._scrub(raw))

        assert last is not None
        n = f"{self.retries} attempt{'s' if self.retries != 1 else ''}"
        how = "unreachable" if last.unreachable else "still failing"
        raise JudgeError(self._scrub(f"LLM judge server {shown} {how} after {n}: {last.cause}"))

    def _post_once(self, data: bytes, headers: dict, shown: str) -> str:
        """One POST; the body text of a 200, `_Retryable` or JudgeError otherwise."""
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:  # an answer, but not a 2xx
            cause = f"answered {exc.code}: {_short_body(exc)}"
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(self._scrub(cause), unreachable=False) from None
            raise JudgeError(self._scrub(f"LLM judge server {shown} {cause}")) from None
        except urllib.error.URLError as exc:  # no answer: refused, DNS, connect timeout
            raise _Retryable(self._scrub(_reason(exc.reason, self.timeout)), unreachable=True) from None
        except (OSError, http.client.HTTPException) as exc:  # read timeout, reset, bad status line
            raise _Retryable(self._scrub(_reason(exc, self.timeout)), unreachable=True) from None


def _texts(blocks: list) -> list[str]:
    """The text of the {"type": "text", "text": ...} blocks (thinking blocks are skipped)."""
    return [
        b["text"] for b in blocks
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]


def _show(text: str | None) -> str:
    """A prediction as shown to the judge: an empty one is visibly empty."""
    text = (text or "").strip()
    return text if text else "(empty)"


def _reason(reason, timeout: float) -> str:
    """A one-line cause for a failed connection."""
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason) or type(reason).__name__
    return " ".join(text.split())


def _short_body(exc: urllib.error.HTTPError) -> str:
    """The first 200 characters of an error response, on one line."""
    try:
        body = exc.read(4000).decode("utf-8", errors="replace")
    except Exception:  # the body is only decoration for the message
        body = ""
    body = " ".join(body.split()) or (exc.reason if isinstance(exc.reason, str) else "") or "(no body)"
    return body[:200]
