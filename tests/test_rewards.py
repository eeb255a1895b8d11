"""Custom rewards: dataset columns reach a reward callable, several rewards combine with weights, an
HTTP endpoint can score, and every malformed answer is a clear error."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.models.reward import make_reward_fn
from tests.helpers import free_port

PROMPTS, RESPONSES = ["What is 2 + 2?", "What is 3 + 3?"], ["It is 4.", "It is 7."]


def test_a_reward_gets_the_columns_its_signature_names():
    fn = make_reward_fn("tests.helpers:answer_reward", "", "cpu")
    got = fn(PROMPTS, RESPONSES, [True, True], answer=[4, 6], source=["a", "b"])  # `source` is not asked for
    assert got.tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"needs the prompt column\(s\) \['answer'\]; the prompts have \['source'\]"):
        fn(PROMPTS, RESPONSES, [True, True], source=["a", "b"])  # a column it needs and the data lacks


def test_a_reward_that_cannot_be_imported_is_a_config_error_and_the_working_directory_is_searched(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="reward 'no_such_module:f': cannot import it"):
        make_reward_fn("no_such_module:f", "", "cpu")
    (tmp_path / "my_rewards.py").write_text("def ok(prompts, responses, terminated):\n    return [1.0] * len(prompts)\n")
    monkeypatch.chdir(tmp_path)  # the user's own module beside their data, as `rlhfkit ... reward=my_rewards:ok` finds it
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert make_reward_fn("my_rewards:ok", "", "cpu")(PROMPTS, RESPONSES).tolist() == [1.0, 1.0]


def test_rewards_combine_with_weights():
    fn = make_reward_fn("tests.helpers:answer_reward + tests.helpers:short_reward", "", "cpu", weights=[2.0, 0.5])
    assert fn(PROMPTS, RESPONSES, None, answer=[4, 6]).tolist() == [2.0 - 1.5, 0.0 - 1.5]
    with pytest.raises(ValueError, match="2 reward\\(s\\) but 1 weight"):
        make_reward_fn("tests.helpers:answer_reward+tests.helpers:short_reward", "", "cpu", weights=[1.0])


def test_a_reward_of_the_wrong_length_is_an_error_naming_it():
    fn = make_reward_fn("tests.helpers:wrong_length_reward", "", "cpu")
    with pytest.raises(ValueError, match="reward 'tests.helpers:wrong_length_reward': expected 2 finite scores"):
        fn(PROMPTS, RESPONSES)


class Endpoint(BaseHTTPRequestHandler):
    """Scores by length; fails the first `flaky` requests with 503; `mode` picks a malformed answer."""
    flaky, mode, seen = 0, "ok", []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.seen.append(body)
        if Endpoint.flaky:
            Endpoint.flaky -= 1
            self.send_response(503)
            self.end_headers()
            return
        answer = {"ok": json.dumps({"scores": [len(r) for r in body["responses"]]}), "garbage": "<html>oops",
                  "strings": json.dumps({"scores": ["1", "2"]}), "reject": ""}[Endpoint.mode]
        code = 400 if Endpoint.mode == "reject" else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(answer.encode() if code == 200 else b"bad request: no prompts")

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Endpoint.flaky, Endpoint.mode, Endpoint.seen = 0, "ok", []
    yield f"http://127.0.0.1:{port}/score"
    server.shutdown()


def test_an_http_reward_scores_with_retries_and_clear_errors(endpoint):
    fn = make_reward_fn(endpoint, "", "cpu", timeout=5, retries=3)
    Endpoint.flaky = 2  # two 503s, then an answer
    assert fn(PROMPTS, RESPONSES, [True, False], answer=[4, 6]).tolist() == [8.0, 8.0]
    assert Endpoint.seen[-1] == {"prompts": PROMPTS, "responses": RESPONSES, "terminated": [True, False], "answer": [4, 6]}
    for mode, message in (("garbage", "the answer is not JSON"), ("strings", "expected {\"scores\": [numbers]}"),
                          ("reject", "HTTP 400: bad request")):
        Endpoint.mode = mode
        with pytest.raises(ValueError, match=f"reward {endpoint}: .*{message[:12]}"):
            fn(PROMPTS, RESPONSES)
    dead = make_reward_fn(f"http://127.0.0.1:{free_port()}/", "", "cpu", timeout=1, retries=2)
    with pytest.raises(ValueError, match="no answer after 2 tries"):
        dead(PROMPTS, RESPONSES)


def test_collect_experience_hands_the_batch_columns_to_the_reward(tiny_model, tiny_tok):
    from rlhfkit.rollout import collect_experience

    seen = {}

    def reward(prompts, responses, terminated, **columns):
        seen.update(columns)
        return torch.zeros(len(prompts))

    collect_experience(tiny_model, tiny_model, tiny_tok, PROMPTS, reward, max_new_tokens=3, temperature=1.0,
                       columns={"answer": [4, 6]})
    assert seen == {"answer": [4, 6]}
