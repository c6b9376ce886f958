"""Only the operator chooses where the server connects, and what a hostile LLM server can do is bounded
(issue 24, item 3). Every server here is real, on loopback (`llm_loopback`):

- a URL outside the operator's list (`RECSYS_LLM_ENDPOINTS`) is refused before any connection: a bare
  listening socket counts the connections made (and counts one when the same URL is listed);
- one endless 20 MB line (the 3 GB attack, scaled down) errors within 2 s with the client's memory
  bounded; a server trickling a byte every 2 s cannot hold a request past its total deadline (+1 s), in
  the body or in the headers; a reply nested 200,000 deep, bad JSON or wrong types are `LLMError`s with
  what to do, never a RecursionError or a traceback;
- the API key goes only to the endpoint whose `key_env` holds it; a redirect is not followed;
- a hub name is refused without `RECSYS_ALLOW_HUB_MODELS=1` before any request to the hub (a child
  process with the hub pointed at a recording server), for the Blurbs models and the text tower's and the
  hybrid's encoder through the CLI's `--set`; `llm/my-model` is a folder of the workspace's llm/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from llm_loopback import ConnectionRecorder, LoopbackLLM

from recsys_core.blurbs import hub
from recsys_core.blurbs.endpoints import ENV_ENDPOINTS, operator_endpoints
from recsys_core.blurbs.remote import MAX_LINE_BYTES, MAX_REPLY_BYTES, OpenAIBackend
from recsys_core.errors import LLMError

MESSAGES = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_operator_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_ENDPOINTS, "RECSYS_LLM_URL", "RECSYS_LLM_MODEL", "RECSYS_LLM_API_KEY", hub.ENV_ALLOW_HUB):
        monkeypatch.delenv(name, raising=False)


def _listed(monkeypatch: pytest.MonkeyPatch, *entries: dict) -> None:
    monkeypatch.setenv(ENV_ENDPOINTS, json.dumps(list(entries)))


def _failure(call) -> tuple[LLMError, float, int]:
    """The LLMError `call` raises, the seconds it took and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LLMError) as caught:
            call()
        return caught.value, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- where: the operator's list ------------------------------------------------------------------------


def test_a_url_not_in_the_operators_list_is_refused_before_any_connection(monkeypatch) -> None:
    with ConnectionRecorder() as visitor, LoopbackLLM("ok") as operator:  # the operator has a server; not this one
        for url in (visitor.url, visitor.url + "/v1", visitor.url.replace("127.0.0.1", "localhost")):
            for backend in (OpenAIBackend(url, "m"), OpenAIBackend.from_env(url, "m")):
                err, _, _ = _failure(lambda b=backend: list(b.generate(MESSAGES)))
                assert "not one of the servers the operator configured" in str(err) and ENV_ENDPOINTS in err.hint
        time.sleep(0.3)  # the recorder accepts every 0.1 s
        assert visitor.connections == 0
        assert "".join(OpenAIBackend(operator.url, "tiny").generate(MESSAGES)) == "ok"
        # The same URL once the operator lists it: the recorder does see the connection (it answers nothing).
        _listed(monkeypatch, {"name": "listed", "url": visitor.url, "model": "m"})
        _failure(lambda: list(OpenAIBackend(visitor.url, "m", timeout_s=2).generate(MESSAGES)))
        time.sleep(0.3)
        assert visitor.connections == 1


def test_the_key_goes_only_to_the_endpoint_that_names_it(monkeypatch) -> None:
    with LoopbackLLM("ok", operator=False) as keyed, LoopbackLLM("ok", operator=False) as plain:
        monkeypatch.setenv("KEYED_LLM_KEY", "sk-operator")
        _listed(monkeypatch, {"name": "keyed", "url": keyed.url, "model": "m", "key_env": "KEYED_LLM_KEY"},
                {"name": "plain", "url": plain.url, "model": "m2", "timeout_s": 5})
        servers = operator_endpoints()
        assert list(servers) == ["keyed", "plain"] and servers["plain"].timeout_s == 5.0
        for endpoint in servers.values():
            list(OpenAIBackend.for_endpoint(endpoint).generate(MESSAGES))
        list(OpenAIBackend.from_env(plain.url).generate(MESSAGES))
    assert keyed.headers[0]["Authorization"] == "Bearer sk-operator" and keyed.requests[0]["model"] == "m"
    assert all("Authorization" not in h for h in plain.headers) and plain.requests[0]["model"] == "m2"


def test_a_redirect_is_not_followed(monkeypatch) -> None:
    with LoopbackLLM("elsewhere") as target, LoopbackLLM(mode="redirect", redirect_to="") as server:
        server.redirect_to = target.url + "/v1/chat/completions"
        err, _, _ = _failure(lambda: list(OpenAIBackend(server.url, "m").generate(MESSAGES)))
    assert "redirect, not followed" in str(err) and target.requests == []


@pytest.mark.parametrize("value, problem", [
    ("[{", "not valid JSON"), ('{"name": "x"}', "not a JSON list"), ("[1]", "must be an object"),
    ('[{"name": "x", "url": "ftp://h", "model": "m"}]', "http:// or https://"),
    ('[{"name": "x", "url": "http://h:99999", "model": "m"}]', "port number"),
    ('[{"name": "x", "url": "http://user:pw@h", "model": "m"}]', "no user:password@"),
    ('[{"name": "x", "url": "http://h", "model": "m", "api_key": "sk-secret"}]', "unknown field(s) ['api_key']"),
    ('[{"name": "x", "url": "http://h", "model": "m", "key_env": "sk-secret value"}]', "must name an environment"),
    ('[{"name": "x", "url": "http://h", "model": "m", "timeout_s": -1}]', "timeout_s"),
    ('[{"name": "x", "url": "http://h", "model": "m", "timeout_s": true}]', "timeout_s"),
    ('[{"name": "x", "url": "http://h", "model": ""}]', "needs a \"url\" and a \"model\""),
    ('[{"name": "<b>x</b>", "url": "http://h", "model": "m"}]', "short plain name"),
    ('[{"name": "x", "url": "http://a", "model": "m"}, {"name": "x", "url": "http://b", "model": "m"}]', "used twice"),
    ("/no/such/endpoints.json", "neither a JSON list nor a readable JSON file"),
])
def test_a_bad_endpoint_list_says_what_to_fix(monkeypatch, value: str, problem: str) -> None:
    monkeypatch.setenv(ENV_ENDPOINTS, value)
    with pytest.raises(LLMError) as caught:
        operator_endpoints()
    assert problem in str(caught.value) and ENV_ENDPOINTS in str(caught.value) and caught.value.hint
    assert "sk-secret" not in str(caught.value)


def test_the_list_may_be_a_file(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps([{"name": "ollama", "url": "http://127.0.0.1:11434", "model": "llama3.2"}]))
    monkeypatch.setenv(ENV_ENDPOINTS, str(path))
    monkeypatch.setenv("RECSYS_LLM_URL", "http://127.0.0.1:8000/v1")  # the older setting adds "default"
    servers = operator_endpoints()
    assert list(servers) == ["ollama", "default"]
    assert servers["ollama"].url == "http://127.0.0.1:11434/v1/chat/completions"


# ---- memory and time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream, message", [(True, "streamed a line over 64 KB"), (False, "over 1 MB")])
def test_an_endless_20_mb_line_errors_fast_with_bounded_memory(stream: bool, message: str) -> None:
    with LoopbackLLM(mode="flood", flood_bytes=20 << 20) as server:
        err, took, peak = _failure(lambda: list(OpenAIBackend(server.url, "m").generate(MESSAGES, stream=stream)))
    assert message in str(err) and err.hint and took < 2.0, took
    # Bounded by the line cap when streaming and by the reply cap otherwise: never by what the server sends.
    limit = 4 * MAX_LINE_BYTES if stream else 3 * MAX_REPLY_BYTES
    assert peak < limit, (peak, limit)
    assert server.sent_bytes < 20 << 20  # the client hung up long before the end


def test_many_short_lines_are_capped_in_all() -> None:
    with LoopbackLLM("word " * 30_000) as server:  # ~60 bytes an event: about 1.8 MB of events
        err, _, _ = _failure(lambda: list(OpenAIBackend(server.url, "m").generate(MESSAGES)))
    assert "over 1 MB" in str(err)


@pytest.mark.parametrize("mode, stream", [("trickle", True), ("trickle", False), ("trickle-headers", True)])
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(mode: str, stream: bool) -> None:
    """A byte every 2 s never trips a per-read socket timeout of 2.5 s: only a total deadline ends it. (A reader
    that only checked the clock between bytes would stop at 4 s; one that lost the socket http.client hands
    to an HTTP/1.0 response, as a first version did, at 4 s too.)"""
    with LoopbackLLM(mode=mode, trickle_s=2.0) as server:
        backend = OpenAIBackend(server.url, "m", timeout_s=2.5)
        err, took, _ = _failure(lambda: list(backend.generate(MESSAGES, stream=stream)))
    assert "did not finish its reply within 2.5 s" in str(err) and err.hint
    assert 2.4 <= took <= 3.5, took
    assert server.sent_bytes >= 1  # it did trickle


# ---- every bad reply is an LLMError ------------------------------------------------------------------------


@pytest.mark.parametrize("stream, depth", [(False, 200_000), (True, 20_000)])
def test_a_reply_nested_deep_is_a_clear_error(stream: bool, depth: int) -> None:
    with LoopbackLLM(mode="nested", depth=depth) as server:
        err, _, _ = _failure(lambda: list(OpenAIBackend(server.url, "m").generate(MESSAGES, stream=stream)))
    assert "nested too deep" in str(err) and err.hint
    assert not isinstance(err.__cause__, LLMError) and isinstance(err.__cause__, RecursionError)


@pytest.mark.parametrize("stream, body", [
    (False, '{"choices": "x"}'), (False, '{"choices": []}'), (False, '{"choices": [{"message": null}]}'),
    (False, '{"choices": [{"message": {"content": 5}}]}'), (False, "[1, 2]"), (False, "null"), (False, '"text"'),
    (False, '{"error": {"message": "server internals"}}'), (False, "\udcff<html>server internals</html>"),
    (False, ""), (True, 'data: {"choices": [{"delta": 7}]}\n\n'), (True, "data: [1]\n\n"),
    (True, 'data: {"choices": [{"delta": {"content": ["a"]}}]}\n\n'), (True, "data: {nope\n\n"),
    (True, 'data: {"error": "server internals"}\n\n'),
])
def test_every_malformed_reply_is_an_llm_error_that_says_what_to_do(stream: bool, body: str) -> None:
    with LoopbackLLM(body.encode("utf-8", "surrogateescape").decode("latin-1"), mode="raw") as server:
        err, _, _ = _failure(lambda: list(OpenAIBackend(server.url, "m").generate(MESSAGES, stream=stream)))
    assert err.hint and "server internals" not in str(err)


# ---- models: the hub only where the operator allows it, folders only in llm/ -------------------------------


def test_llm_my_model_is_a_folder_of_the_workspace_llm_never_a_hub_name(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "workspace" / "llm"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text("{}")
    (root / "empty").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "out").symlink_to(tmp_path / "elsewhere")
    for allowed in ("", "1"):
        monkeypatch.setenv(hub.ENV_ALLOW_HUB, allowed)
        for typed in ("llm/my-model", "my-model", "./my-model"):
            with pytest.raises(LLMError, match="no such folder in the workspace llm/: 'my-model'") as caught:
                hub.llm_source(typed, root)
            assert str(tmp_path) not in str(caught.value) and caught.value.hint
        for typed in ("../datasets", "llm/../../etc", "/etc", "~/models", "llm/out", str(tmp_path / "elsewhere")):
            with pytest.raises(LLMError, match="outside the workspace's llm/ folder") as caught:
                hub.llm_source(typed, root)
            assert str(tmp_path) not in str(caught.value)
        with pytest.raises(LLMError, match="holds no config.json"):
            hub.llm_source("llm/empty", root)
        assert hub.llm_source("llm/tiny", root) == hub.llm_source(" tiny ", root) == str((root / "tiny").resolve())
    monkeypatch.setenv(hub.ENV_ALLOW_HUB, "")
    with pytest.raises(LLMError, match="downloading models from the Hugging Face hub is off"):
        hub.llm_source("someorg/some-model", root)
    monkeypatch.setenv(hub.ENV_ALLOW_HUB, "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # another test's fixture may have put the process offline
    assert hub.llm_source("someorg/some-model", root) == "someorg/some-model"


_HUB_RECORDER = """
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
seen = []
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _any(self):
        seen.append(self.path); self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_HEAD = do_POST = _any
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:%d" % server.server_address[1]  # before huggingface_hub is imported
import contextlib, io
from recsys_core import cli
from recsys_core.models.text_tower import load_encoder
from recsys_core.errors import RecsysError
out = {}
for case, argv in (("text_tower", ["--model", "text_tower", "--set", "model_name=someorg/not-a-real-model"]),
                   ("hybrid", ["--model", "hybrid", "--set", "text_model_name=someorg/not-a-real-model"])):
    before, stdout, stderr = len(seen), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["train", "--dataset", sys.argv[1], "--no-save", "--no-estimate", "--profile", "none",
                         "--set", "epochs=1", *argv])
    out[case] = {"code": code, "said": stdout.getvalue() + stderr.getvalue(), "requests": len(seen) - before}
os.environ["RECSYS_ALLOW_HUB_MODELS"] = "1"
before = len(seen)
try:
    load_encoder("someorg/not-a-real-model")
    error = ""
except RecsysError as err:
    error = str(err)
out["allowed"] = {"error": error, "requests": len(seen) - before}
print(json.dumps(out))
"""


def test_an_encoder_hub_name_from_the_cli_set_is_refused_before_any_request(tmp_path: Path) -> None:
    """The CLI's `--set` and the Train form end in the same `load_encoder`: by default the text tower's and the
    hybrid's hub names are refused (status 2, what to do) with not one request to the hub; allowed, the hub is
    asked (so the count can see a request)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
           hub.ENV_ALLOW_HUB: "", "RECSYS_WORKSPACE": str(tmp_path / "workspace")}
    out = subprocess.run([sys.executable, "-c", _HUB_RECORDER, "demo"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    cases = json.loads(out.stdout.strip().splitlines()[-1])
    for case in ("text_tower", "hybrid"):
        assert cases[case]["requests"] == 0, cases[case]
        assert cases[case]["code"] == 2 and hub.ENV_ALLOW_HUB in cases[case]["said"], cases[case]
        assert "downloading models from the Hugging Face hub is off" in cases[case]["said"]
    assert cases["allowed"]["requests"] >= 1 and "cannot load sentence encoder" in cases["allowed"]["error"]
