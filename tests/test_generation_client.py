"""The chat-completions client against a real HTTP server on 127.0.0.1: retries (429 with Retry-After,
5xx, timeouts, refused connections), malformed responses, bounded concurrency, usage and cost, logprobs,
and the API key sent only as the Authorization header. Also the prompt templates and their parsers.

:class:`FakeChatServer` (used by test_generation_run.py too) is a ThreadingHTTPServer speaking the
chat-completions protocol with a deterministic responder. Markers in the last user message choose faults:
``[429xN]`` / ``[503xN]`` / ``[500xN]`` / ``[slowxN]`` / ``[tricklexN]`` / ``[headersxN]`` / ``[dropxN]`` /
``[cutxN]`` fail the first N attempts (429 or 503 with Retry-After, HTTP 500, a response slower than the
client's timeout, a body - or the headers - trickled a byte every ``trickle_interval`` seconds - each read
well within the timeout, the whole far beyond it - a closed connection, and half a body, then the
connection dropped); ``[badjson]`` and
``[nochoices]`` always answer malformed bodies, ``[badusage]`` a body whose token counts are infinite and
negative, ``[hugelogprob]`` (label prompts) a "log-probability" of 1000; ``[401]`` answers 401 echoing the
Authorization header, ``[401long]`` the same after padding that puts the key across the 300-byte cut.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from litdistill.generation.client import ChatClient, ConfigError, Usage, parse_retry_after, resolve_api_key
from litdistill.generation.templates import ParseError, PromptTemplate, TemplateError, load_template

SECRET = "sk-test-SECRET-0123456789abcdefXYZ"
KEY_ENV = "LITDISTILL_TEST_API_KEY"
COMPLETION_TOKENS = 7


def prompt_tokens(prompt: str) -> int:
    return len(prompt.split())


def answer(prompt: str) -> str:
    return f"Answer to: {prompt}"


class FakeChatServer:
    """A chat-completions server on a random free port; counts every request per prompt."""

    def __init__(
        self, delay: float = 0.0, slow_seconds: float = 1.0, retry_after: str = "0", trickle_interval: float = 0.05
    ) -> None:
        self.delay, self.slow_seconds, self.retry_after = delay, slow_seconds, retry_after
        self.trickle_interval = trickle_interval
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()  # prompt -> requests received
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.raw: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.healthy = False  # True: every marker is ignored (the "fixed" server of a rerun)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle(self, raw)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that timed out and left
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def exact(self, prompt: str) -> int:
        with self.lock:
            return self.attempts[prompt]

    def count(self, prompt_substring: str) -> int:
        with self.lock:
            return sum(n for p, n in self.attempts.items() if prompt_substring in p)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.attempts.values())

    # -- the responder ------------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _trickle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """Headers at once, then the body a byte at a time until it ends or the client hangs up."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            time.sleep(self.trickle_interval)
            h.wfile.write(body[i : i + 1])

    def _trickle_headers(self, h: BaseHTTPRequestHandler) -> None:
        """The status line, then a header a byte at a time, until the client hangs up (or 20 s pass)."""
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Pad: " + b"x" * 400:
            time.sleep(self.trickle_interval)
            h.wfile.write(bytes([byte]))

    def handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if h.path != "/v1/chat/completions":
            return self._send(h, 404, b'{"error": {"message": "not found"}}')
        body = json.loads(raw)
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.attempts[prompt] += 1
            n = self.attempts[prompt]
            self.bodies.append(body)
            self.auth.append(h.headers.get("Authorization"))
            self.raw.append(raw)
        if self.delay:
            time.sleep(self.delay)
        if not self.healthy:
            for kind, times in re.findall(r"\[(429|503|500|slow|trickle|headers|drop|cut)x(\d+)\]", prompt):
                if n > int(times):
                    continue
                if kind in ("429", "503"):
                    return self._send(
                        h, int(kind), b'{"error": {"message": "busy"}}', {"Retry-After": self.retry_after}
                    )
                if kind == "trickle":
                    return self._trickle(h, json.dumps({"choices": [], "pad": "x" * 400}).encode())
                if kind == "headers":
                    h.close_connection = True
                    return self._trickle_headers(h)
                if kind == "500":
                    return self._send(h, 500, b'{"error": {"message": "internal"}}')
                if kind == "slow":
                    time.sleep(self.slow_seconds)
                    break
                if kind == "drop":
                    h.close_connection = True
                    h.connection.close()
                    return None
                if kind == "cut":  # the headers promise a body; half of it arrives, then the connection drops
                    whole = json.dumps({"choices": [], "pad": "x" * 400}).encode()
                    h.send_response(200)
                    h.send_header("Content-Type", "application/json")
                    h.send_header("Content-Length", str(len(whole)))
                    h.end_headers()
                    h.wfile.write(whole[: len(whole) // 2])
                    h.wfile.flush()
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return None
            if "[badjson]" in prompt:
                return self._send(h, 200, b'{"choices": [ {"message": oops')
            if "[nochoices]" in prompt:
                usage = {"prompt_tokens": prompt_tokens(prompt), "completion_tokens": 0}
                return self._send(h, 200, json.dumps({"id": "x", "object": "chat.completion", "usage": usage}).encode())
            if "[401]" in prompt or "[401long]" in prompt:  # long: the echo starts past any cut of the error text
                pad = "x" * 230 if "[401long]" in prompt else ""
                echo = json.dumps(
                    {"error": {"message": f"{pad}Incorrect API key provided: {h.headers.get('Authorization')}"}}
                )
                return self._send(h, 401, echo.encode())
            if "[badusage]" in prompt:  # JSON's 1e999 reads as float infinity
                out = (
                    '{"choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}], '
                    '"usage": {"prompt_tokens": 1e999, "completion_tokens": -5}}'
                )
                return self._send(h, 200, out.encode())
        content = answer(prompt)
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if body.get("logprobs"):
            content, choice["logprobs"] = self.label_logprobs(prompt, int(body.get("top_logprobs") or 5))
            choice["message"]["content"] = content
        usage = {
            "prompt_tokens": prompt_tokens(prompt),
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": prompt_tokens(prompt) + COMPLETION_TOKENS,
        }
        out = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }
        return self._send(h, 200, json.dumps(out).encode())

    @staticmethod
    def label_logprobs(prompt: str, k: int) -> tuple[str, dict]:
        """ADE labelling: 'Yes' (p=.9) when the sentence mentions 'induced', else 'No' (p=.8); the
        alternatives mix casing/spaces like real tokenizers do."""
        ade = "induced" in prompt
        p_yes = 0.9 if ade else 0.2
        alts = [
            ("Yes" if ade else "No", math.log(p_yes if ade else 1 - p_yes)),
            (" no" if ade else " yes", math.log((1 - p_yes) * 0.5 if ade else p_yes * 0.5)),
            ("No" if ade else "Yes", math.log((1 - p_yes) * 0.5 if ade else p_yes * 0.5)),
            ("Maybe", math.log(0.001)),
        ][:k]
        if "[hugelogprob]" in prompt:  # not a log-probability at all: exp(1000) overflows
            alts = [(alts[0][0], 1000.0), *alts[1:]]
        first = {
            "token": alts[0][0],
            "logprob": alts[0][1],
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts],
        }
        return ("Yes" if ade else "No"), {"content": [first]}


@pytest.fixture
def server():
    with FakeChatServer() as s:
        yield s


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return KEY_ENV


def make_client(server, **kw) -> ChatClient:
    opts = dict(
        base_url=server.url,
        model="teacher-1",
        api_key_env=KEY_ENV,
        timeout=0.4,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        max_concurrency=4,
        prices={"input": 2.0, "output": 8.0},
        seed=0,
    )
    opts.update(kw)
    return ChatClient(**opts)


def run_all(client: ChatClient, prompts: list[str], params: dict | None = None) -> dict:
    results = {}
    client.map(
        [(p, [{"role": "user", "content": p}]) for p in prompts],
        params or {"temperature": 0},
        lambda tag, r: results.__setitem__(tag, r),
        progress=False,
    )
    return results


# -- retries, failures, usage -----------------------------------------------------------------------------
def test_retries_and_malformed_responses_against_a_real_server(server, key_env):
    prompts = [
        "plain one",
        "rate limited [429x2]",
        "flaky [500x1]",
        "slow [slowx1]",
        "dropped [dropx1]",
        "cut mid-body [cutx2]",
        "broken [badjson]",
        "empty [nochoices]",
        "always down [500x99]",
        "plain two",
    ]
    client = make_client(server)
    results = run_all(client, prompts)
    assert set(results) == set(prompts)

    for p in ("plain one", "plain two"):
        assert results[p].ok and results[p].content == answer(p) and results[p].attempts == 1
    assert results["rate limited [429x2]"].ok and results["rate limited [429x2]"].attempts == 3
    assert results["flaky [500x1]"].ok and results["flaky [500x1]"].attempts == 2
    assert results["slow [slowx1]"].ok and results["slow [slowx1]"].attempts == 2  # first attempt timed out
    assert results["dropped [dropx1]"].ok and results["dropped [dropx1]"].attempts == 2
    cut = results["cut mid-body [cutx2]"]  # a short body is a connection error, retried like one
    assert cut.ok and cut.attempts == 3 and cut.content == answer("cut mid-body [cutx2]")
    bad = results["broken [badjson]"]
    assert not bad.ok and "invalid JSON" in bad.error and bad.attempts == 1
    empty = results["empty [nochoices]"]
    assert not empty.ok and "no choices" in empty.error
    down = results["always down [500x99]"]
    assert not down.ok and down.attempts == 4 and "HTTP 500" in down.error and "gave up" in down.error
    # the server saw exactly the attempts the results report
    for p in prompts:
        assert server.count(p) == results[p].attempts, p

    stats = client.stats
    assert stats.retries == 2 + 1 + 1 + 1 + 2 + 3
    assert stats.reasons["HTTP 429"] == 2 and stats.reasons["timeout"] == 1 and stats.reasons["connection error"] == 3
    assert stats.ok == 7 and stats.failed == 3
    ok = [p for p in prompts if results[p].ok]
    # usage: the successful responses plus the billed-but-malformed one
    expected_in = sum(prompt_tokens(p) for p in ok) + prompt_tokens("empty [nochoices]")
    assert stats.usage.prompt_tokens == expected_in
    assert stats.usage.completion_tokens == COMPLETION_TOKENS * len(ok)
    assert stats.usage.cost(client.prices) == pytest.approx(
        (expected_in * 2.0 + COMPLETION_TOKENS * len(ok) * 8.0) / 1e6
    )


@pytest.mark.parametrize(
    ("retry_after", "cap", "prompt", "wait"),
    [
        ("0.4", None, "wait [429x1]", 0.4),  # honoured
        ("30", 0.3, "wait long [429x1]", 0.3),  # capped at retry_after_max
        ("0.4", None, "overloaded [503x1]", 0.4),  # on a 503 too
    ],
)
def test_retry_after_is_honoured_up_to_the_cap(retry_after, cap, prompt, wait, key_env):
    with FakeChatServer(retry_after=retry_after) as server:
        extra = {"retry_after_max": cap} if cap is not None else {}
        client = make_client(server, backoff_base=0.001, backoff_max=0.001, **extra)
        start = time.monotonic()
        result = client.chat([{"role": "user", "content": prompt}])
        elapsed = time.monotonic() - start
    assert result.ok and result.attempts == 2 and server.count(prompt) == 2
    assert client.stats.reasons["HTTP 503" if "503" in prompt else "HTTP 429"] == 1
    assert client.stats.sleeps == [pytest.approx(wait)] and wait <= elapsed < 5


@pytest.mark.parametrize("marker", ["tricklex1", "headersx1"], ids=["body", "headers"])
def test_a_trickled_response_is_cut_at_the_timeout_and_retried(key_env, marker):
    """Each byte comes well within the socket timeout (0.05 s apart), the whole body (or the headers,
    after the status line) would take 20 s: the attempt ends at its deadline, as a timeout (read_by for
    the body, the connection's watchdog for the headers), and the retry gets the answer."""
    prompt = f"dribble [{marker}]"
    with FakeChatServer(trickle_interval=0.05) as server:
        client = make_client(server, timeout=0.5)
        start = time.monotonic()
        result = client.chat([{"role": "user", "content": prompt}])
        elapsed = time.monotonic() - start
    assert result.ok and result.attempts == 2 and result.content == answer(prompt)
    assert client.stats.reasons["timeout"] == 1
    assert 0.5 <= elapsed < 1.5, elapsed  # cut at about the timeout, not after 20 s


def test_over_tls_trickled_headers_are_cut_too_and_the_certificate_is_verified(key_env, tmp_path, monkeypatch):
    """The same watchdog on HTTPS (a real TLS server with a self-signed certificate the client is told
    to trust through SSL_CERT_FILE; verification stays on)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with FakeChatServer(trickle_interval=0.05) as server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
        client = make_client(server, base_url=server.url.replace("http://", "https://"), timeout=0.5)
        start = time.monotonic()
        result = client.chat([{"role": "user", "content": "tls stall [headersx1]"}])
        elapsed = time.monotonic() - start
    assert result.ok and result.attempts == 2 and result.content == answer("tls stall [headersx1]")
    assert client.stats.reasons["timeout"] == 1 and 0.5 <= elapsed < 2.0, elapsed


def test_full_jitter_backoff_is_bounded_and_exponential(server, key_env):
    slept: list[float] = []
    client = make_client(server, max_retries=5, backoff_base=1.0, backoff_max=4.0, sleep=slept.append, seed=123)
    result = client.chat([{"role": "user", "content": "down [500x5]"}])
    assert result.ok and result.attempts == 6 and len(slept) == 5
    caps = [min(4.0, 1.0 * 2**n) for n in range(5)]  # 1, 2, 4, 4, 4
    assert all(0 <= s <= cap for s, cap in zip(slept, caps)), slept
    assert len(set(slept)) == 5  # jittered, not a fixed schedule


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=0) > 1e9
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None


def test_concurrency_is_bounded(key_env):
    with FakeChatServer(delay=0.15) as server:
        client = make_client(server, max_concurrency=3, timeout=5)
        results = run_all(client, [f"q{i}" for i in range(12)])
    assert all(r.ok for r in results.values()) and len(results) == 12
    assert server.max_in_flight == 3


def test_refused_connection_is_retried_then_recorded(key_env):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        api_key_env=KEY_ENV,
        max_retries=2,
        backoff_base=0.001,
        timeout=1,
    )
    result = client.chat([{"role": "user", "content": "hello"}])
    assert not result.ok and result.attempts == 3 and "connection error" in result.error


# -- secrets ----------------------------------------------------------------------------------------------
def test_api_key_is_sent_only_as_the_authorization_header_and_never_echoed(server, key_env):
    client = make_client(server)
    results = run_all(client, ["hello", "bad key [401]"])
    assert results["hello"].ok
    assert set(server.auth) == {f"Bearer {SECRET}"}
    assert not any(SECRET.encode() in raw for raw in server.raw)  # not in any request body
    rejected = results["bad key [401]"]
    assert not rejected.ok and rejected.attempts == 1 and "HTTP 401" in rejected.error  # not retried
    assert SECRET not in rejected.error and "***" in rejected.error  # the server's echo is scrubbed
    assert SECRET not in repr(client)


def test_an_echo_past_the_error_cut_leaves_no_prefix_of_the_key(server, key_env):
    rejected = run_all(make_client(server), ["bad key [401long]"])["bad key [401long]"]
    assert not rejected.ok and "HTTP 401" in rejected.error
    assert SECRET[:8] not in rejected.error  # scrubbed before it was cut, so no piece of the key survives


def test_infinite_or_negative_token_counts_are_a_response_not_a_crash(server, key_env):
    client = make_client(server)
    results = run_all(client, ["odd usage [badusage]", "plain"])
    assert results["plain"].ok and results["odd usage [badusage]"].ok
    assert results["odd usage [badusage]"].content == "fine"
    assert client.stats.usage.prompt_tokens == prompt_tokens("plain")  # the unusable counts count as 0


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR_XYZ", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR_XYZ"):
        ChatClient(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY_VAR_XYZ")
    # optional keys (a local vLLM server) may be absent
    assert resolve_api_key("NO_SUCH_KEY_VAR_XYZ", required=False) is None
    # a key pasted where the variable's name belongs is refused without being echoed
    with pytest.raises(ConfigError) as err:
        resolve_api_key(SECRET)
    assert SECRET not in str(err.value) and "NAME" in str(err.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"base_url": "api.openai.com"}, "http"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"prices": {"input": "cheap"}}, "prices.input"),
    ],
)
def test_bad_client_settings_are_clear(kw, match, key_env):
    opts = dict(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV)
    opts.update(kw)
    with pytest.raises(ConfigError, match=match):
        ChatClient(**opts)


# -- templates and soft labels ---------------------------------------------------------------------------
def test_soft_label_template_requests_logprobs_and_parses_them(server, key_env):
    template = load_template("ade_label")
    client = make_client(server)
    params = {"temperature": 0, "max_tokens": 3, **template.request_params()}
    assert params["logprobs"] is True and params["top_logprobs"] == 10
    ade = client.chat(template.render("Lithium-induced hypothyroidism."), params)
    other = client.chat(template.render("The patient took aspirin daily."), params)
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 10
    assert server.bodies[0]["messages"][0]["role"] == "system"
    p = template.parse(ade.content, ade.logprobs)
    assert p["label"] == 1 and p["label_name"] == "ade" and p["soft_label"] == pytest.approx([0.1, 0.9])
    q = template.parse(other.content, other.logprobs)
    assert q["label"] == 0 and q["soft_label"] == pytest.approx([0.8, 0.2])


def test_label_parser():
    t = load_template("ade_label")
    assert t.label_names == ["not_ade", "ade"]
    for text, label in [("Yes", 1), ("yes.", 1), (" NO", 0), ("Answer: yes", 1), ("true", 1), ("No, it does not.", 0)]:
        assert t.parse(text)["label"] == label, text
    with pytest.raises(ParseError, match="could not parse a label"):
        t.parse("Perhaps")
    # unparseable words, but the answer token's logprobs still give the teacher's distribution
    logprobs = {
        "content": [
            {
                "token": "Maybe",
                "logprob": -0.1,
                "top_logprobs": [
                    {"token": "Maybe", "logprob": -0.1},
                    {"token": "yes", "logprob": -1.0},
                    {"token": "no", "logprob": -3.0},
                ],
            }
        ]
    }
    parsed = t.parse("Maybe", logprobs)
    assert (
        parsed["label"] == 1 and parsed["label_source"] == "logprobs" and sum(parsed["soft_label"]) == pytest.approx(1)
    )


def test_templates_render_and_validate():
    explain = load_template("explain")
    messages = explain.render("Why is the sky blue?")
    assert messages[0]["role"] == "system" and "step by step" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Why is the sky blue?"}
    assert load_template("answer").render("hi") == [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError, match=r"unknown template 'nope'.*'ade_label'.*'answer'.*'explain'"):
        load_template("nope")
    with pytest.raises(TemplateError, match=r"prompt.parser='regex'.*\['text', 'label'\]"):
        PromptTemplate.from_config({"name": "x", "user": "{input}", "parser": "regex"})
    t = PromptTemplate.from_config({"name": "ctx", "user": "Context: {context}\nQ: {input}"})
    with pytest.raises(TemplateError, match=r"\['context'\].*available fields: \['id', 'input', 'question'\]"):
        t.check_fields(["id", "question"])
    assert t.render("q?", {"context": "c"})[0]["content"] == "Context: c\nQ: q?"


def test_usage_cost():
    u = Usage()
    u.add({"prompt_tokens": 1_000_000, "completion_tokens": 500_000})
    assert u.cost({"input": 0.15, "output": 0.60}) == pytest.approx(0.45)
    assert u.cost(None) is None and u.total_tokens == 1_500_000
