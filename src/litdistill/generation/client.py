"""An OpenAI-compatible chat-completions client for teachers behind an HTTP API.

Works against api.openai.com and any server speaking the same protocol (vLLM, llama.cpp server,
TGI's OpenAI route, LiteLLM, ...). Standard library only (``urllib``), thread-pool concurrency.

* at most ``max_concurrency`` requests in flight;
* retries on HTTP 408/409/429, 5xx, connection errors and timeouts, with exponential backoff and full
  jitter (``uniform(0, min(backoff_max, backoff_base * 2**retry))``), never less than the server's
  ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_max``); at most ``max_retries``
  retries per request;
* ``timeout`` seconds per attempt: the bound on connecting and on each wait for data, and a deadline
  for the whole response: the status line and headers (a watchdog shuts the socket at the deadline)
  and the body (checked as it arrives), so a server that trickles bytes is cut off there and the
  attempt is retried as a timeout;
* a malformed response (not JSON, no ``choices``, no message content) or a non-retryable HTTP error
  is a failed :class:`ChatResult` with the reason; :meth:`ChatClient.chat` never raises for a
  request that went wrong;
* token usage is summed per client and priced from per-1M-token prices.

The API key is read from the environment variable *named* by ``api_key_env`` and sent only as the
``Authorization: Bearer`` header; it is scrubbed from every error text the client produces.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.client
import ipaddress
import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("litdistill.generation")

RETRY_STATUS = frozenset({408, 409, 429})
CHUNK = 65536  # bytes per read of a response body, and the most of an error body read
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """A setting that cannot work, reported before any request is made."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Mapping[str, Any] | Usage | None) -> None:
        if other is None:
            return
        if isinstance(other, Usage):
            self.prompt_tokens += other.prompt_tokens
            self.completion_tokens += other.completion_tokens
            return
        self.prompt_tokens += _as_int(other.get("prompt_tokens"))
        self.completion_tokens += _as_int(other.get("completion_tokens"))

    def cost(self, prices: Mapping[str, Any] | None) -> float | None:
        """Estimated cost from ``prices`` = {input: per 1M prompt tokens, output: per 1M completion tokens}."""
        if not prices:
            return None
        p_in, p_out = prices.get("input"), prices.get("output")
        if p_in is None and p_out is None:
            return None
        return (self.prompt_tokens * float(p_in or 0) + self.completion_tokens * float(p_out or 0)) / 1e6

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _as_int(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError, OverflowError):  # a float infinity from JSON's 1e999 included
        return 0


@dataclass
class ChatResult:
    """One request's outcome. ``ok`` False means ``error`` says why (never an exception)."""

    ok: bool
    content: str | None = None
    finish_reason: str | None = None
    logprobs: Any = None
    usage: dict[str, int] | None = None
    error: str | None = None
    attempts: int = 0
    status: int | None = None
    latency_s: float = 0.0
    interrupted: bool = False
    soft_label: list[float] | None = None  # set by teachers that compute it themselves (local models)


@dataclass
class ClientStats:
    requests: int = 0  # HTTP attempts
    retries: int = 0
    ok: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)  # retry / failure reasons
    sleeps: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "ok": self.ok,
            "failed": self.failed,
            "reasons": dict(self.reasons),
            "usage": self.usage.as_dict(),
        }


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.status = reason, retry_after, status


class _Fatal(Exception):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class _Watchdog:
    """Shuts a connection's socket down at ``deadline`` (``time.monotonic()``) unless cancelled first.

    urllib's timeout bounds each socket read, so a server sending its status line and headers a byte
    at a time could hold an attempt open for as long as it likes; the blocked read returns at the
    shutdown, and :class:`_DeadlineConnection` reports it as a timeout."""

    def __init__(self, connection: http.client.HTTPConnection, deadline: float) -> None:
        self.deadline = deadline
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._cut, args=(connection,))
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _cut(connection: http.client.HTTPConnection) -> None:
        with contextlib.suppress(OSError, AttributeError):
            connection.sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


def _deadline_connection(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    """``base`` whose ``getresponse`` (connect, status line, headers) ends at the request's deadline."""

    class _DeadlineConnection(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deadline = deadline

        def getresponse(self) -> http.client.HTTPResponse:
            watchdog = _Watchdog(self, self.deadline) if self.deadline is not None else None
            try:
                return super().getresponse()
            except (OSError, http.client.HTTPException) as err:
                if watchdog is not None and watchdog.expired:
                    raise TimeoutError(
                        "timed out: the status line and headers were still arriving at the deadline"
                    ) from err
                raise
            finally:
                if watchdog is not None:
                    watchdog.cancel()

    return _DeadlineConnection


_DeadlineHTTP = _deadline_connection(http.client.HTTPConnection)
_DeadlineHTTPS = _deadline_connection(http.client.HTTPSConnection)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_DeadlineHTTP, deadline=getattr(req, "deadline", None)), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(
            functools.partial(_DeadlineHTTPS, deadline=getattr(req, "deadline", None)), req, context=self._context
        )


def read_by(response: Any, deadline: float, limit: int | None = None) -> bytes:
    """The body of ``response`` (at most ``limit`` bytes), read chunk by chunk so the deadline is checked
    as it arrives: urllib's timeout bounds each socket read, so a server that sends a byte now and then
    would otherwise hold an attempt open for as long as it likes. Past ``deadline``: ``TimeoutError``."""
    chunks: list[bytes] = []
    size = 0
    while limit is None or size < limit:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out: the response was still arriving at the deadline ({size} bytes read)")
        chunk = response.read1(CHUNK if limit is None else min(CHUNK, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _DaemonPool:
    """A fixed set of daemon worker threads running submitted calls as futures.

    ``ThreadPoolExecutor`` joins its (non-daemon) workers at interpreter exit, even after
    ``shutdown(wait=False)``: after Ctrl-C, a request in flight would hold the exit for up to the
    client's ``timeout``. Daemon workers are abandoned at exit instead; their requests are lost, as an
    interrupted run's in-flight requests are anyway."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001  (handed to the caller by future.result())
                future.set_exception(err)

    def shutdown(self, cancel: bool = False) -> None:
        """Let the workers end once the queue is empty (``cancel``: drop what is queued first); never
        waits for a call in progress."""
        if cancel:
            with contextlib.suppress(queue.Empty):
                while True:
                    job = self._jobs.get_nowait()
                    if job is not None:
                        job[0].cancel()
        for _ in range(self._workers):
            self._jobs.put(None)


def redact_url(url: str) -> str:
    """``url`` without user:password and with query values masked (for manifests and logs)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ChatClient:
    """Chat completions over HTTP with bounded concurrency, retries, usage and cost."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key_required: bool = True,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        retry_after_max: float = 120.0,
        max_concurrency: int = 8,
        prices: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        seed: int | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"teacher_api.base_url={base_url!r} is not an http(s) URL, "
                "e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1"
            )
        if not model:
            raise ConfigError(
                "teacher_api.model is empty; set the teacher's model name, e.g. teacher_api.model=gpt-4o-mini"
            )
        for name, value, low in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"teacher_api.{name}={value!r} must be an integer >= {low}")
        if not timeout or float(timeout) <= 0:
            raise ConfigError(f"teacher_api.timeout={timeout!r} must be a positive number of seconds")
        for key, value in (prices or {}).items():
            if value is not None and not isinstance(value, (int, float)):
                raise ConfigError(f"teacher_api.prices.{key}={value!r} must be a number (USD per 1M tokens) or null")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._key = resolve_api_key(api_key_env, api_key_required)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.max_concurrency = int(max_concurrency)
        self.prices = dict(prices or {})
        self.extra_body = dict(extra_body or {})
        self.extra_headers = dict(extra_headers or {})
        self.stats = ClientStats()
        self.stop = threading.Event()  # set -> no new attempts, sleeps end now
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._sleep = sleep
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(urllib.parse.urlsplit(base_url).hostname) else []
        self._opener = urllib.request.build_opener(*handlers, _DeadlineHTTPHandler, _DeadlineHTTPSHandler)

    # -- secrets ------------------------------------------------------------------------------------
    @property
    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:  # never the key
        url = redact_url(self.base_url)
        return f"ChatClient(base_url={url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # -- one request --------------------------------------------------------------------------------
    def body(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        body.update({k: v for k, v in self.extra_body.items() if v is not None})
        body.update({k: v for k, v in (params or {}).items() if v is not None})
        return body

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "litdistill",
            **self.extra_headers,
        }
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _attempt(self, payload: bytes) -> tuple[dict[str, Any], int]:
        request = urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST")
        deadline = time.monotonic() + self.timeout
        request.deadline = deadline  # read by the connection's watchdog (_DeadlineConnection)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
                raw = read_by(response, deadline)
                expected = response.headers.get("Content-Length")
                if expected is not None and expected.isdigit() and len(raw) < int(expected):
                    # http.client returns a short body when the connection drops mid-body (no IncompleteRead)
                    raise http.client.IncompleteRead(raw, int(expected) - len(raw))
        except urllib.error.HTTPError as err:
            status = err.code
            try:
                # scrubbed before it is cut: a cut could otherwise leave a prefix of an echoed key
                detail = self.redact(read_by(err, deadline, CHUNK).decode("utf-8", "replace"))[:300]
            except Exception:  # noqa: BLE001
                detail = ""
            finally:
                err.close()
            reason = f"HTTP {status}" + (f": {detail.strip()}" if detail.strip() else "")
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(
                    reason, parse_retry_after(err.headers.get("Retry-After") if err.headers else None), status
                ) from None
            raise _Fatal(reason, status) from None
        except (TimeoutError, OSError, urllib.error.URLError, http.client.HTTPException) as err:
            inner = getattr(err, "reason", err)
            kind = "timeout" if isinstance(inner, TimeoutError) or "timed out" in str(inner) else "connection error"
            raise _Retryable(f"{kind}: {type(inner).__name__}: {inner}") from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            head = self.redact(raw[:CHUNK].decode("utf-8", "replace"))[:80]
            raise _Fatal(f"malformed response: invalid JSON ({len(raw)} bytes: {head!r})", status) from None
        if not isinstance(data, dict):
            raise _Fatal(f"malformed response: JSON {type(data).__name__}, not an object", status)
        return data, status

    def chat(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any] | None = None) -> ChatResult:
        """One chat completion, retried as configured. Never raises for a failed request."""
        payload = json.dumps(self.body(messages, params)).encode("utf-8")
        start = time.monotonic()
        attempts = 0
        last: str | None = None
        status: int | None = None
        for retry in range(self.max_retries + 1):
            if self.stop.is_set():
                return ChatResult(False, error="interrupted", attempts=attempts, interrupted=True)
            attempts += 1
            with self._lock:
                self.stats.requests += 1
            try:
                data, status = self._attempt(payload)
            except _Retryable as err:
                last, status = self.redact(err.reason), err.status
                if retry == self.max_retries:
                    break
                delay = self._backoff(retry, err.retry_after)
                with self._lock:
                    self.stats.retries += 1
                    self.stats.reasons[_reason_kind(err.reason)] += 1
                    self.stats.sleeps.append(delay)
                log.debug("retry %d/%d in %.2fs after %s", retry + 1, self.max_retries, delay, last)
                if self._sleep is not None:
                    self._sleep(delay)
                elif self.stop.wait(delay):
                    return ChatResult(False, error="interrupted", attempts=attempts, interrupted=True)
                continue
            except _Fatal as err:
                return self._failed(self.redact(err.reason), attempts, err.status, start)
            except Exception as err:  # noqa: BLE001  (a bug or an odd transport error must not end the run)
                return self._failed(
                    self.redact(f"unexpected error: {type(err).__name__}: {err}"), attempts, None, start
                )
            try:
                return self._parse(data, attempts, status, start)
            except Exception as err:  # noqa: BLE001  (odd field values are the server's fault, not a reason to stop)
                return self._failed(
                    self.redact(f"malformed response: {type(err).__name__}: {err}"), attempts, status, start
                )
        return self._failed(f"gave up after {attempts} attempt(s): {last}", attempts, status, start)

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        with self._lock:
            jitter = self._rng.uniform(0, min(self.backoff_max, self.backoff_base * 2**retry))
        if retry_after is not None:
            return max(min(retry_after, self.retry_after_max), jitter if retry_after > 0 else 0.0)
        return jitter

    def _failed(self, reason: str, attempts: int, status: int | None, start: float) -> ChatResult:
        with self._lock:
            self.stats.failed += 1
            self.stats.reasons[_reason_kind(reason)] += 1
        return ChatResult(False, error=reason, attempts=attempts, status=status, latency_s=time.monotonic() - start)

    def _parse(self, data: dict[str, Any], attempts: int, status: int, start: float) -> ChatResult:
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        usage_d = (
            {
                "prompt_tokens": _as_int(usage.get("prompt_tokens")),
                "completion_tokens": _as_int(usage.get("completion_tokens")),
            }
            if usage
            else None
        )
        if usage_d:
            with self._lock:
                self.stats.usage.add(usage_d)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            err = data.get("error")
            detail = f" (error: {str(err.get('message', err) if isinstance(err, dict) else err)[:200]})" if err else ""
            result = self._failed(self.redact(f"malformed response: no choices{detail}"), attempts, status, start)
            result.usage = usage_d
            return result
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        if content is None and isinstance(choice.get("text"), str):  # completions-style servers
            content = choice["text"]
        if not isinstance(content, str):
            refusal = message.get("refusal")
            reason = (
                f"refusal: {refusal}"
                if refusal
                else f"malformed response: no message content (finish_reason={choice.get('finish_reason')!r})"
            )
            result = self._failed(self.redact(reason), attempts, status, start)
            result.usage = usage_d
            return result
        with self._lock:
            self.stats.ok += 1
        return ChatResult(
            True,
            content=content,
            finish_reason=choice.get("finish_reason"),
            logprobs=choice.get("logprobs"),
            usage=usage_d,
            attempts=attempts,
            status=status,
            latency_s=time.monotonic() - start,
        )

    # -- many requests ------------------------------------------------------------------------------
    def map(
        self,
        requests: Sequence[tuple[Any, Sequence[Mapping[str, str]]]],
        params: Mapping[str, Any] | None,
        on_result: Callable[[Any, ChatResult], None],
        progress: bool = True,
        desc: str = "generate",
    ) -> None:
        """Run ``(tag, messages)`` requests, at most ``max_concurrency`` at a time; ``on_result(tag, result)``
        is called in the calling thread as each finishes. On an exception in the caller (Ctrl-C) the
        queued requests are dropped, no new attempt starts, and requests in flight are left to daemon
        threads, so the process can exit without waiting for them."""
        from tqdm.auto import tqdm

        self.stop.clear()
        pending = list(requests)
        bar = tqdm(total=len(pending), desc=desc, unit="req", disable=not progress, dynamic_ncols=True)
        pool = _DaemonPool(min(self.max_concurrency, len(pending)), "litdistill-chat")
        in_flight: dict[Future, Any] = {}
        index = 0
        try:
            while index < len(pending) or in_flight:
                # keep the queue short (2x the concurrency) so Ctrl-C has little to cancel
                while index < len(pending) and len(in_flight) < 2 * self.max_concurrency:
                    tag, messages = pending[index]
                    in_flight[pool.submit(self.chat, messages, params)] = tag
                    index += 1
                done, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    tag = in_flight.pop(future)
                    result = future.result()
                    if result.interrupted:
                        continue
                    on_result(tag, result)
                    bar.update(1)
                    cost = self.stats.usage.cost(self.prices)
                    bar.set_postfix(
                        ok=self.stats.ok,
                        failed=self.stats.failed,
                        retries=self.stats.retries,
                        **({"cost": f"${cost:.4f}"} if cost is not None else {}),
                        refresh=False,
                    )
        except BaseException:
            self.stop.set()
            pool.shutdown(cancel=True)
            raise
        else:
            pool.shutdown()
        finally:
            bar.close()


def _reason_kind(reason: str) -> str:
    if reason.startswith("HTTP "):
        return reason.split(":")[0]
    for kind in ("timeout", "connection error", "malformed response", "refusal", "gave up"):
        if reason.startswith(kind):
            return kind
    return reason.split(":")[0][:40]


def resolve_api_key(api_key_env: str | None, required: bool = True) -> str | None:
    """The API key from the environment variable named ``api_key_env``; a clear error if it must exist and doesn't."""
    if api_key_env in (None, ""):
        if required:
            raise ConfigError(
                "teacher_api.api_key_env is empty; set it to the NAME of the environment variable "
                "holding the API key (e.g. OPENAI_API_KEY), or set teacher_api.api_key_required=false"
            )
        return None
    if not isinstance(api_key_env, str) or not ENV_NAME.match(api_key_env):
        # never echo the value: it may be a key pasted where the variable's name belongs
        raise ConfigError(
            "teacher_api.api_key_env must be the NAME of an environment variable (letters, digits, "
            "underscore), not the key itself; e.g. api_key_env=OPENAI_API_KEY and "
            "`export OPENAI_API_KEY=...`"
        )
    key = os.environ.get(api_key_env)
    if not key:
        if required:
            raise ConfigError(
                f"environment variable {api_key_env} (teacher_api.api_key_env) is not set or empty; "
                f"export {api_key_env}=<your key> before running, or point teacher_api.api_key_env "
                "at the variable that holds it"
            )
        return None
    return key.strip()
