"""LLMJudge against a scripted local HTTP server that answers like either API.

No real API is reached: every test talks to 127.0.0.1 on a free port.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wmg.judges.base import JudgeError, Verdict
from wmg.judges.llm import PROMPT_HASH, LLMJudge, parse_reply

KEY = "sk-test-SECRET123"
GOLD = "gadget_type: ReadWrite gadget; location: the COP instruction; explanation: Copies blocks."
A = "gadget_type: ReadWrite gadget; location: COP; explanation: Copies memory blocks."
B = "gadget_type: BOOL tag; location: COP; explanation: Writes a bit."
NO_SLEEP = lambda seconds: None  # noqa: E731 - keeps retry tests instant
SLEEP = "sleep"  # a scripted reply that sleeps past the client's timeout


# --- the scripted server ------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        # Header names are case-insensitive (urllib sends "X-api-key"): keep them lower-cased.
        server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body})
        try:
            status, reply = server.script.popleft()
        except IndexError:  # an unexpected request fails loudly
            status, reply = 418, "unscripted request"
        if reply == SLEEP:
            time.sleep(server.sleep_seconds)
            return  # the client has given up by now; just close
        data = (json.dumps(reply) if isinstance(reply, (dict, list)) else reply).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


class Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.sleep_seconds = 0.5

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def queue(self, *replies):
        """Each reply is (status, body) with body a dict (sent as JSON), a str, or SLEEP."""
        self.script.extend(replies)

    def handle_error(self, request, client_address):  # a client that timed out: expected
        pass


@pytest.fixture
def server():
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """A developer's real keys, servers or proxies must not leak into the tests."""
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY",
                "WMG_JUDGE_MODEL", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def openai_reply(text: str) -> tuple[int, dict]:
    return 200, {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def anthropic_reply(*texts: str) -> tuple[int, dict]:
    blocks = [{"type": "thinking", "thinking": "Verdict: DISAGREEMENT? let me think"}]
    blocks += [{"type": "text", "text": t} for t in texts]
    return 200, {"id": "msg", "type": "message", "role": "assistant", "content": blocks}


def verdict_json(verdict: str, explanation: str = "Both name a ReadWrite gadget.") -> str:
    return json.dumps({"verdict": verdict, "explanation": explanation})


def openai_judge(server, **kw) -> LLMJudge:
    kw.setdefault("sleep", NO_SLEEP)
    return LLMJudge(api="openai", base_url=server.url + "/v1", model="judge-model", **kw)


def user_prompt(request) -> str:
    return request["json"]["messages"][-1]["content"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- OpenAI-compatible ----------------------------------------------------------------

def test_openai_asks_both_orders_and_agreeing_orders_give_0_9(server):
    server.queue(openai_reply(verdict_json("FULL_AGREEMENT")), openai_reply(verdict_json("full_agreement")))
    verdict = openai_judge(server, api_key=KEY).compare(A, B, GOLD)

    assert verdict == Verdict("full", "Both name a ReadWrite gadget.", 0.9)
    assert len(server.requests) == 2
    first, second = server.requests
    assert first["path"] == second["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == f"Bearer {KEY}"
    body = first["json"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Timing/Synchronization gadget" in body["messages"][0]["content"]
    # The predictions swap places between the two requests.
    p1, p2 = user_prompt(first), user_prompt(second)
    assert p1.index("Prediction A") < p1.index(A) < p1.index("Prediction B") < p1.index(B)
    assert p2.index("Prediction A") < p2.index(B) < p2.index("Prediction B") < p2.index(A)
    assert GOLD in p1 and GOLD in p2


def test_openai_without_key_sends_no_authorization(server):
    server.queue(openai_reply(verdict_json("DISAGREEMENT")), openai_reply(verdict_json("DISAGREEMENT")))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert verdict.verdict == "disagreement"
    assert all("authorization" not in r["headers"] for r in server.requests)


def test_against_gold_asks_once_with_confidence_0_8(server):
    server.queue(openai_reply(verdict_json("PARTIAL", "Same category, less specific.")))
    verdict = openai_judge(server).against_gold(B, GOLD)
    assert verdict == Verdict("partial", "Same category, less specific.", 0.8)
    assert len(server.requests) == 1
    prompt = user_prompt(server.requests[0])
    assert GOLD in prompt and B in prompt and "Prediction B" not in prompt


def test_orders_disagreeing_keep_the_cautious_verdict(server):
    server.queue(openai_reply(verdict_json("FULL_AGREEMENT", "Same.")),
                 openai_reply(verdict_json("DISAGREEMENT", "Different concepts.")))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert verdict.verdict == "disagreement" and verdict.confidence == 0.5
    assert "orders disagreed" in verdict.explanation
    assert "full" in verdict.explanation and "Different concepts." in verdict.explanation


def test_invalid_beats_everything_when_orders_disagree(server):
    server.queue(openai_reply(verdict_json("INVALID")), openai_reply(verdict_json("PARTIAL_AGREEMENT")))
    assert openai_judge(server).compare(A, B, GOLD).verdict == "invalid"


def test_one_order_unreadable_gives_confidence_0_4(server):
    server.queue(openai_reply("I am not sure."), openai_reply(verdict_json("PARTIAL_AGREEMENT")))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert (verdict.verdict, verdict.confidence) == ("partial", 0.4)


def test_fenced_json_and_anchored_verdict_line_parse(server):
    fenced = 'Here is my judgment:\n```json\n{"verdict": "PARTIAL_AGREEMENT", "explanation": "B is less specific."}\n```'
    anchored = "Verdict: PARTIAL_AGREEMENT\nB names a BOOL tag, A the ReadWrite category."
    server.queue(openai_reply(fenced), openai_reply(anchored))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert verdict == Verdict("partial", "B is less specific.", 0.9)


def test_verdict_word_in_prose_is_an_error_not_a_verdict(server):
    prose = "I would not call this a FULL_AGREEMENT, although both mention COP."
    server.queue(openai_reply(prose), openai_reply(prose))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert verdict.verdict == "error" and verdict.confidence == 0.0
    assert verdict.explanation == "unparseable reply: " + prose


def test_200_without_expected_structure_is_an_error_outcome(server):
    # The body even carries a "verdict" key, but not where the API puts the reply.
    server.queue((200, {"verdict": "FULL"}), (200, "not json at all"))
    verdict = openai_judge(server).compare(A, B, GOLD)
    assert verdict.verdict == "error"
    assert verdict.explanation.startswith("unparseable reply: ")


@pytest.mark.parametrize("reply, expected", [
    ('{"verdict": "FULL", "explanation": "Same gadget. Worded differently."}', ("full", "Same gadget.")),
    ('```json\n{"verdict": "disagreement", "explanation": "x"}\n```', ("disagreement", "x")),
    ('Sure! {"verdict": "Partial Agreement", "explanation": "y"} Hope this helps.', ("partial", "y")),
    ("**Verdict:** INVALID\nPrediction B repeats itself.", ("invalid", "Prediction B repeats itself.")),
    ("INVALID - B repeats itself. More text.", ("invalid", "B repeats itself.")),
    ("verdict: full agreement", ("full", "")),
    ("<think>Verdict: DISAGREEMENT? No.</think>\nVerdict: FULL_AGREEMENT", ("full", "")),
    ("I would not call this a FULL_AGREEMENT.", None),
    ("Invalid inputs were not seen; this is partial agreement at best.", None),
    ('{"verdict": "MAYBE"}', None),
    ("Verdict: FULL_AGREEMENT\nVerdict: DISAGREEMENT", None),  # contradicts itself
    ("", None),
    (None, None),
])
def test_parse_reply(reply, expected):
    assert parse_reply(reply) == expected


def test_explanation_is_trimmed_to_300_characters():
    verdict, explanation = parse_reply(json.dumps({"verdict": "FULL", "explanation": "word " * 200}))
    assert verdict == "full" and len(explanation) <= 300


# --- Anthropic ------------------------------------------------------------------------

def test_anthropic_messages_api(server):
    server.queue(anthropic_reply('{"verdict": "FULL_AGREEMENT", ', '"explanation": "Same gadget."}'),
                 anthropic_reply("Verdict: FULL_AGREEMENT"))
    judge = LLMJudge(api="anthropic", base_url=server.url, model="claude-judge", api_key=KEY, sleep=NO_SLEEP)
    verdict = judge.compare(A, B, GOLD)

    assert verdict == Verdict("full", "Same gadget.", 0.9)
    request = server.requests[0]
    assert request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == KEY
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request["headers"]
    body = request["json"]
    assert body["model"] == "claude-judge" and body["max_tokens"] == 300 and body["temperature"] == 0
    assert "ReadWrite gadget" in body["system"]
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_anthropic_env_defaults(server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("WMG_JUDGE_MODEL", "claude-env")
    server.queue(anthropic_reply(verdict_json("INVALID")))
    assert LLMJudge(api="anthropic").against_gold("gadget gadget gadget", GOLD).verdict == "invalid"
    assert server.requests[0]["headers"]["x-api-key"] == KEY
    assert server.requests[0]["json"]["model"] == "claude-env"


# --- HTTP failures --------------------------------------------------------------------

def test_500_then_success_is_retried(server):
    sleeps = []
    server.queue((500, "overloaded"), openai_reply(verdict_json("FULL")), openai_reply(verdict_json("FULL")))
    verdict = openai_judge(server, sleep=sleeps.append, backoff=0.5).compare(A, B, GOLD)
    assert verdict.verdict == "full"
    assert len(server.requests) == 3 and sleeps == [0.5]


def test_429_is_retried(server):
    server.queue((429, "slow down"), openai_reply(verdict_json("FULL")))
    assert openai_judge(server).against_gold(A, GOLD).verdict == "full"


def test_500_on_every_attempt_raises_naming_the_url(server):
    sleeps = []
    server.queue(*[(503, "busy")] * 3)
    judge = openai_judge(server, api_key=KEY, sleep=sleeps.append)
    with pytest.raises(JudgeError) as info:
        judge.compare(A, B, GOLD)
    message = str(info.value)
    assert f"{server.url}/v1/chat/completions" in message
    assert "3 attempts" in message and "503" in message and "\n" not in message
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]  # backoff * 2**attempt
    assert KEY not in message


def test_timeout_raises_after_retries(server):
    server.queue(*[(200, SLEEP)] * 2)
    judge = openai_judge(server, timeout=0.2, retries=2)
    started = time.monotonic()
    with pytest.raises(JudgeError) as info:
        judge.against_gold(A, GOLD)
    assert time.monotonic() - started < 2.0
    assert "timed out" in str(info.value) and "2 attempts" in str(info.value)
    assert server.url in str(info.value)
    assert len(server.requests) == 2


def test_401_raises_at_once_without_leaking_the_key(server):
    # A server that echoes the key back must not get it into our message.
    server.queue((401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    judge = openai_judge(server, api_key=KEY)
    with pytest.raises(JudgeError) as info:
        judge.compare(A, B, GOLD)
    message = str(info.value)
    assert "401" in message and "Incorrect API key" in message and server.url in message
    assert KEY not in message
    assert len(server.requests) == 1  # no retry


def test_connection_refused_raises():
    port = closed_port()
    judge = LLMJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=KEY, sleep=NO_SLEEP)
    with pytest.raises(JudgeError) as info:
        judge.against_gold(A, GOLD)
    message = str(info.value)
    assert message.startswith(f"LLM judge server http://127.0.0.1:{port}/v1/chat/completions unreachable after 3 attempts")
    assert "refused" in message.lower()
    assert KEY not in message


# --- secrets, configuration -------------------------------------------------------------

def test_key_never_in_describe_repr_or_explanations(server):
    server.queue(openai_reply(f"Verdict: INVALID - the key {KEY} was in the prompt"),
                 openai_reply(f"Verdict: INVALID - the key {KEY} was in the prompt"))
    judge = openai_judge(server, api_key=KEY)
    verdict = judge.compare(A, B, GOLD)
    assert verdict.verdict == "invalid"
    assert KEY not in verdict.explanation
    assert KEY not in repr(judge) and KEY not in str(judge)
    assert KEY not in json.dumps(judge.describe())
    assert judge.describe() == {"name": "llm", "version": "1", "model": "judge-model", "prompt_hash": PROMPT_HASH}
    assert len(PROMPT_HASH) == 64


def test_missing_model_raises(monkeypatch):
    with pytest.raises(JudgeError, match="no judge model: give --judge-model or set WMG_JUDGE_MODEL"):
        LLMJudge()


def test_unknown_api_raises():
    with pytest.raises(JudgeError, match="unknown judge API"):
        LLMJudge(api="gemini", model="m")


def test_openai_env_defaults(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("WMG_JUDGE_MODEL", "env-model")
    server.queue(openai_reply(verdict_json("FULL")))
    judge = LLMJudge(sleep=NO_SLEEP)
    assert judge.model == "env-model" and judge.base_url == server.url + "/v1"
    assert judge.against_gold(A, GOLD).verdict == "full"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["json"]["model"] == "env-model"


def test_arguments_win_over_env_and_defaults(monkeypatch):
    monkeypatch.setenv("WMG_JUDGE_MODEL", "env-model")
    assert LLMJudge(model="arg-model").model == "arg-model"
    judge = LLMJudge()
    assert judge.base_url == "https://api.openai.com/v1"
    assert "api_key=none" in repr(judge)
    assert LLMJudge(api="anthropic").url == "https://api.anthropic.com/v1/messages"
