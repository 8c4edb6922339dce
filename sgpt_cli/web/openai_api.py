"""The OpenAI API's shapes for `sgpt serve`: a request body checked into engine jobs, and the
responses and stream chunks built from the engine's events.

What it holds: `ApiError` (an OpenAI-style error object with its HTTP status), `Limits` (the
server's caps, from the SERVE settings), `Request` (what a checked body asks for: one engine job per
choice, in choice order), `parse_completion` and `parse_chat` (the two endpoints' bodies; every
value is checked here, once, by the declared settings), `chat_script` (messages become the play
script, laid out by sgpt_cli.infer.chat_session's conventions), and the builders of response objects
(with logprobs, each endpoint's own OpenAI shape: sgpt_cli.infer.logprobs).

What it does not do: import a web framework, asyncio, numpy or ONNX Runtime (sgpt_cli.web.server serves;
sgpt_cli.infer.engine generates), or print. Tests call it directly.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from sgpt_cli.infer.prompt import PromptRead, read_for_model, unknown_note
from sgpt_cli.errors import UsageError
from sgpt_cli.infer.logprobs import chat_logprobs, completion_logprobs
from sgpt_cli.settings import (CHAT_SETTINGS, LOGPROBS, NAME, SAMPLING, SAMPLING_NAMES, SERVE_REQUEST, SERVE_STOPS,
                               ReplyParams, SamplingParams, by_name)

MESSAGE_LIMIT = 400  # characters of an error message: a value quoted back is cut, never a megabyte
_SAMPLING = by_name(SAMPLING)
_CHAT = by_name(CHAT_SETTINGS)
_REQUEST = by_name(SERVE_REQUEST)

# Fields an OpenAI client may send that change nothing here (accepted, ignored).
_HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
COMPLETION_FIELDS = {"model", "prompt", "n", "stream", "echo", "stream_options", "logprobs", "suffix", "best_of",
                     "frequency_penalty", "presence_penalty", "logit_bias", *SAMPLING_NAMES, *_HARMLESS}
_TOP = LOGPROBS.but(none=None)  # how many alternatives: a number in a body (null is the default: off)
CHAT_FIELDS = {"model", "messages", "n", "stream", "stream_options", "logprobs", "top_logprobs",
               "frequency_penalty", "presence_penalty", "logit_bias", "max_completion_tokens", "tools",
               "tool_choice", "functions", "function_call", "response_format", "one_speech",
               *SAMPLING_NAMES, *_HARMLESS}
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """An error the client caused (or a server state it must know about), as OpenAI answers it:
    `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        message = " ".join(str(message).split())
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT - 1] + "…"
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    """The server's caps on one request (the SERVE settings of the same names)."""
    max_tokens_limit: int = 4096
    max_n: int = 16
    max_prompt_chars: int = 65_536


@dataclass
class Request:
    """A checked request: jobs[k] is choice k's (prompt the engine reads, params); choice k belongs
    to prompt k // n, as OpenAI numbers the choices of a list of prompts."""
    kind: str  # "completion" | "chat"
    jobs: list[tuple[str, SamplingParams]]
    n: int
    stream: bool = False
    echo: bool = False
    include_usage: bool = False
    prompts: list[str] = field(default_factory=list)  # as given (echo puts them back)
    warnings: list[str] = field(default_factory=list)

    @property
    def logprobs(self) -> bool:
        """The choices carry what the model believed (every job asks alike)."""
        return bool(self.jobs) and self.jobs[0][1].logprobs is not None


# --- checking a body -------------------------------------------------------------------------------

def _checked(setting, value, param: str | None = None):
    try:
        return setting.check(value, NAME)
    except UsageError as exc:
        raise bad(str(exc), param or setting.name) from None


def _unknown_fields(body: dict, known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise bad(f"unknown field {key!r}", key, "unknown_field")


def _unsupported(body: dict, chat: bool) -> None:
    """Fields OpenAI defines that would change the result and sgpt cannot honour: refused, unless
    they ask for what sgpt does anyway."""
    def given(key, *neutral):
        return key in body and body[key] is not None and body[key] not in neutral

    for key in ("frequency_penalty", "presence_penalty"):
        if given(key, 0, 0.0):
            raise bad(f"{key} is not supported; use repetition_penalty (1 is off) instead", key, "unsupported")
    if given("logit_bias", {}):
        raise bad("logit_bias is not supported", "logit_bias", "unsupported")
    if given("suffix", ""):
        raise bad("suffix is not supported: the model only continues a text", "suffix", "unsupported")
    if given("best_of", 1):
        raise bad("best_of is not supported; ask for n choices instead", "best_of", "unsupported")
    for key in ("tools", "functions"):
        if given(key, []):
            raise bad(f"{key} is not supported: the model writes plays, it calls no tools", key, "unsupported")
    for key in ("tool_choice", "function_call"):
        if given(key, "none"):
            raise bad(f"{key} is not supported: the model calls no tools", key, "unsupported")
    if given("response_format", {"type": "text"}):
        raise bad("response_format is not supported: the reply is plain text", "response_format", "unsupported")


def check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad(f"model must be a string (got {model!r})", "model", "invalid_type")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {model_id!r} (GET /v1/models)",
                       "model", "model_not_found")


def _flags(body: dict, chat: bool) -> tuple[int, bool, bool, bool]:
    n = _checked(_REQUEST["n"], body.get("n") if body.get("n") is not None else 1)
    stream = _checked(_REQUEST["stream"], body.get("stream") if body.get("stream") is not None else False)
    echo = False
    if not chat:
        echo = _checked(_REQUEST["echo"], body.get("echo") if body.get("echo") is not None else False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise bad("stream_options must be an object like {\"include_usage\": true}", "stream_options")
        if not stream:
            raise bad("stream_options is only allowed with stream: true", "stream_options")
        include_usage = _checked(_REQUEST["stream"].but(name="stream_options.include_usage"),
                                 options.get("include_usage", False), "stream_options")
    return n, stream, echo, include_usage


def _sampling(body: dict, limits: Limits, defaults: dict) -> dict:
    """The sampling fields the body gives (null: the default), each checked by its declaration."""
    values = dict(defaults)
    for name in SAMPLING_NAMES:
        raw = body.get(name)
        if name == "max_tokens" and raw is None:
            raw = body.get("max_completion_tokens")  # the chat API's newer name for it
        if raw is None:
            continue
        setting = _SAMPLING[name]
        if name == "max_tokens":
            setting = setting.but(high=limits.max_tokens_limit)
        if name == "stop":
            raw = [raw] if isinstance(raw, str) else raw
            if isinstance(raw, list) and len(raw) > SERVE_STOPS:
                raise bad(f"stop takes at most {SERVE_STOPS} strings (got {len(raw)})", "stop")
        values[name] = _checked(setting, raw)
    return values


def _completion_logprobs(body: dict, echo: bool) -> int | None:
    """/v1/completions' `logprobs`: how many alternatives per character (0: the chosen one's alone)."""
    raw = body.get("logprobs")
    if raw is None or raw is False:
        return None
    if echo:
        raise bad("logprobs with echo is not supported: the prompt's characters are not scored; leave out "
                  "echo or logprobs", "logprobs", "unsupported")
    return _checked(_TOP, raw, "logprobs")


def _chat_logprobs(body: dict) -> int | None:
    """/v1/chat/completions' `logprobs: true` and `top_logprobs` (0 to 20, only with logprobs)."""
    wanted = body.get("logprobs")
    if wanted is not None:
        wanted = _checked(_REQUEST["stream"].but(name="logprobs"), wanted)
    top = body.get("top_logprobs")
    if top is not None and not wanted:
        raise bad("top_logprobs needs \"logprobs\": true", "top_logprobs")
    if not wanted:
        return None
    return 0 if top is None else _checked(_TOP.but(name="top_logprobs"), top)


def _jobs(prompts: list[str], n: int, values: dict, extra_stop: tuple[str, ...] = (),
          params=SamplingParams) -> list:
    """One job per choice: choice j of a prompt gets seed + j (as `sgpt complete --num-samples`);
    `params` is the class of their parameters (a chat reply's: ReplyParams, never empty)."""
    jobs = []
    for prompt in prompts:
        for j in range(n):
            v = dict(values)
            v["stop"] = extra_stop + tuple(v.get("stop") or ())
            if v.get("seed") is not None:
                v["seed"] = v["seed"] + j
            try:
                jobs.append((prompt, params(**v)))
            except UsageError as exc:
                raise bad(str(exc), "seed" if "seed" in str(exc) else None) from None
    return jobs


def _count(choices: int, n: int, limits: Limits, param: str) -> None:
    if choices > limits.max_n:
        raise bad(f"this request asks for {choices} choices (n = {n}, times its prompts); this server "
                  f"allows {limits.max_n} (--max-n)", param)


def parse_completion(body: dict, model_id: str, stoi: dict, window: int, limits: Limits) -> Request:
    """POST /v1/completions: prompt (a string or a list of strings), n, stream, echo and the sampling
    settings; each prompt trimmed and cleaned as `sgpt complete` reads an argument."""
    _unknown_fields(body, COMPLETION_FIELDS)
    _unsupported(body, chat=False)
    check_model(body, model_id)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("prompt is required: a string, or a list of strings", "prompt", "missing_field")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad("prompt must be a string or a non-empty list of strings (token ids are not accepted: "
                  "this model's tokens are characters)", "prompt", "invalid_type")
    n, stream, echo, include_usage = _flags(body, chat=False)
    _count(len(prompts) * n, n, limits, "n")
    for p in prompts:
        if len(p) > limits.max_prompt_chars:
            raise bad(f"a prompt of {len(p):,} characters is longer than this server takes "
                      f"({limits.max_prompt_chars:,}, --max-prompt-chars)", "prompt", "prompt_too_long")
    values = _sampling(body, limits, {})
    values["logprobs"] = _completion_logprobs(body, echo)
    fed, warnings = [], []
    for i, p in enumerate(prompts):
        read = read_for_model([p], stoi, window)
        fed.append(read.fed)
        note = unknown_note(read)
        if note:
            warnings.append(f"prompt {i}: {note}" if len(prompts) > 1 else note)
    return Request("completion", _jobs(fed, n, values), n, stream, echo, include_usage, list(prompts), warnings)


# --- chat: messages become the play script ------------------------------------------------------------

def speaker(name: str, where: str) -> str:
    """A message's `name` as the plays write a speaker: `_` is a space (OpenAI's names have none),
    and a name that is not capitalised is written in capitals (romeo -> ROMEO)."""
    from sgpt_cli.infer.chat_session import is_speaker_line

    if not isinstance(name, str) or not name.strip():
        raise bad(f"{where}.name must be a non-empty string (got {name!r})", f"{where}.name", "invalid_type")
    text = " ".join(name.replace("_", " ").split())
    for candidate in (text, text.upper()):
        if is_speaker_line(candidate + ":"):
            return candidate
    raise bad(f"{where}.name must be a speaker's name as the plays write one: 1 to 4 words of letters, "
              f"_ between them (ROMEO, First_Citizen) (got {name!r})", f"{where}.name")


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                          "supported", f"{where}.content", "unsupported")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where}.content must be a string or a list of text parts (got {content!r})",
              f"{where}.content", "invalid_type")


def chat_script(messages, vocab, block_size: int, limits: Limits = Limits()) -> tuple[str, list[str]]:
    """(the play script's tail the engine reads, the characters dropped). Each message is laid out as
    `sgpt chat` lays out what is typed (sgpt_cli.infer.chat_session.ChatSession.add_user_text), a
    message with a `name` as that speaker's (`NAME: content`), and each is a whole speech: the
    script gets the blank line that ends it, so the reply is the next speech, its speaker chosen by
    the model. (`sgpt chat` leaves a typed `ROMEO: But soft` open for the model to finish; a message
    is what its author said, all of it.) A message that is a speaker's name alone (`name` with no
    content, or the content `JULIET:`) opens that speaker's speech: the next message, or the reply
    when it is the last one, is that speaker's."""
    from sgpt_cli.infer.chat_session import SPEECH_END, ChatSession, is_speaker_line

    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {\"role\", \"content\"} objects", "messages",
                  "missing_field" if messages is None else "invalid_type")
    session = ChatSession(vocab, block_size)
    dropped: dict[str, None] = {}
    total = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if session.script and not session.script.endswith("\n"):
            session.script += "\n"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object with role and content (got {message!r})", where, "invalid_type")
        extra = set(message) - {"role", "content", "name"}
        if extra - {"refusal", "annotations", "audio", "tool_calls", "function_call"}:
            raise bad(f"{where} has an unknown field {sorted(extra)[0]!r}", where, "unknown_field")
        role = message.get("role")
        if role not in ROLES:
            hint = " (sgpt has no tools)" if role in ("tool", "function") else ""
            raise bad(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r}){hint}", f"{where}.role")
        if message.get("tool_calls") or message.get("function_call"):
            raise bad(f"{where}: tool calls are not supported", where, "unsupported")
        text = _content(message, where)
        total += len(text)
        if total > limits.max_prompt_chars:
            raise bad(f"the messages hold more than {limits.max_prompt_chars:,} characters, more than this "
                      "server takes (--max-prompt-chars)", "messages", "prompt_too_long")
        if message.get("name") is not None:
            who = speaker(message["name"], where)
            text = f"{who}: {text.strip()}" if text.strip() else f"{who}:"
        if role == "assistant" and message.get("name") is None:
            clean, lost = session.clean(text)  # a reply as the server gave it: kept as it is
            session.script += clean
        else:
            lost = session.add_user_text(text).dropped
        dropped.update(dict.fromkeys(lost))
        opens = is_speaker_line(session.clean(text)[0].strip())
        if session.script.strip("\n") and not opens and not session.script.endswith(SPEECH_END):
            session.script = session.script.rstrip("\n") + SPEECH_END  # a whole speech
    return session.context(), list(dropped)


def parse_chat(body: dict, model_id: str, vocab, window: int, limits: Limits) -> Request:
    """POST /v1/chat/completions: the messages as a play script; the reply is the next speech, as
    `sgpt chat` makes it (it ends at a blank line unless one_speech is false)."""
    from sgpt_cli.infer.chat_session import SPEECH_END

    _unknown_fields(body, CHAT_FIELDS)
    _unsupported(body, chat=True)
    check_model(body, model_id)
    script, dropped = chat_script(body.get("messages"), vocab, window, limits)
    n, stream, _, include_usage = _flags(body, chat=True)
    _count(n, n, limits, "n")
    defaults = {"max_tokens": _CHAT["max_tokens"].default}  # chat's: a reply reads at a glance
    values = _sampling(body, limits, defaults)
    values["logprobs"] = _chat_logprobs(body)
    one = body.get("one_speech")
    one_speech = _checked(_REQUEST["one_speech"], one) if one is not None else True
    warnings = []
    if dropped:
        note = unknown_note(PromptRead("", "", 0, dropped, True, ""))
        warnings.append(note)
    return Request("chat", _jobs([script], n, values, (SPEECH_END,) if one_speech else (), ReplyParams), n, stream,
                   include_usage=include_usage, prompts=[script], warnings=warnings)


# --- responses ----------------------------------------------------------------------------------------

def finish_reason(stop_reason: str) -> str:
    """OpenAI's finish_reason for the engine's stop reason: "stop" for a stop string (a chat reply's
    end of speech), "length" for max_tokens, and for a request the server cut (shutting down)."""
    return "stop" if stop_reason == "stop" else "length"


def new_id(kind: str) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """Characters are this model's tokens."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Reply:
    """What one request made: each choice's text and stats, as the events arrive. keep=False (a
    stream, whose text is sent as it comes): only the counts and stats are kept, not the text and
    logprobs, so a long stream holds no more than its current chunk."""
    request: Request
    model: str
    id: str = ""
    created: int = 0
    texts: list[list[str]] = field(default_factory=list)
    stats: list = field(default_factory=list)
    believed: list[list] = field(default_factory=list)  # with logprobs: each choice's TokenLogprobs
    length: list[int] = field(default_factory=list)  # each choice's characters so far
    keep: bool = True

    def __post_init__(self):
        self.id = self.id or new_id(self.request.kind)
        self.created = self.created or int(time.time())
        k = len(self.request.jobs)
        self.texts = [[] for _ in range(k)]
        self.stats = [None] * k
        self.believed = [[] for _ in range(k)]
        self.length = [0] * k

    @property
    def left(self) -> int:
        return sum(s is None for s in self.stats)

    def add(self, index: int, event) -> None:
        if event.text:
            if self.keep:
                self.texts[index].append(event.text)
            self.length[index] += len(event.text)
        if event.logprobs and self.keep:
            self.believed[index].extend(event.logprobs)
        if event.stats is not None:
            self.stats[index] = event.stats

    def usage(self) -> dict:
        prompt = sum(self.stats[k].prompt_chars for k in range(0, len(self.stats), self.request.n)
                     if self.stats[k] is not None)
        return usage(prompt, sum(s.chars for s in self.stats if s is not None))

    def _head(self, chunk: bool) -> dict:
        kind = "text_completion" if self.request.kind == "completion" else (
            "chat.completion.chunk" if chunk else "chat.completion")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self) -> dict:
        """The whole response of a request that is done."""
        choices = []
        for k, (texts, stats) in enumerate(zip(self.texts, self.stats)):
            text = "".join(texts)
            reason = finish_reason(stats.stop_reason) if stats else "length"
            if self.request.kind == "completion":
                if self.request.echo:
                    text = self.request.prompts[k // self.request.n] + text
                choices.append({"index": k, "text": text, "logprobs": self._logprobs(self.believed[k]),
                                "finish_reason": reason})
            else:
                choices.append({"index": k, "message": {"role": "assistant", "content": text},
                                "logprobs": self._logprobs(self.believed[k]), "finish_reason": reason})
        out = {**self._head(False), "choices": choices, "usage": self.usage()}
        if self.request.warnings:
            out["warnings"] = self.request.warnings
        return out

    def _logprobs(self, entries, offset: int = 0) -> dict | None:
        """The endpoint's own OpenAI shape of `entries` (None when the request asked for none)."""
        if entries is None or not self.request.logprobs:
            return None
        if self.request.kind == "completion":
            return completion_logprobs(entries, offset)
        return chat_logprobs(entries)

    def chunk(self, index: int, text: str | None = None, finish: str | None = None, role: bool = False,
              logprobs=None) -> dict:
        """One server-sent event's object: a piece of choice `index` (chat: its delta), with the
        TokenLogprobs of its text when the request asked (`add` has already counted the text)."""
        if self.request.kind == "completion":
            offset = self.length[index] - len(text or "")
            choice = {"index": index, "text": text or "", "logprobs": self._logprobs(logprobs, offset),
                      "finish_reason": finish}
        else:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": self._logprobs(logprobs), "finish_reason": finish}
        return {**self._head(True), "choices": [choice]}

    def usage_chunk(self) -> dict:
        return {**self._head(True), "choices": [], "usage": self.usage()}
