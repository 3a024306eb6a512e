"""The MT-Bench judge: rating parsing, the single-answer prompt, the OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from interventions.measure.judge import EndpointJudge, JudgeRequest, judge_messages, parse_rating
from probes.core.errors import ToolkitError


@pytest.mark.parametrize(
    "text, rating",
    [
        ("The answer is clear and correct. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("[[ 3 ]] then later [[9]]", 3.0),
        ("Rating: [[10]]", 10.0),
        ("Rating: [[11]]", None),  # out of range
        ("Rating: [[0]]", None),
        ("Rating: 7", None),  # no double brackets
        ("[7]", None),
        ("Rating: [[seven]]", None),
        ("Rating: [[", None),  # cut off
        ("", None),
    ],
)
def test_judge_ratings_parse_only_from_double_brackets_in_range(text, rating):
    assert parse_rating(text) == rating


def test_judge_prompts_are_mtbench_single_answer_prompts():
    system, user = judge_messages(JudgeRequest(("What is 2+2?",), ("4",)))
    assert "impartial judge" in system or "impartial judge" in user
    assert "[[rating]]" in system + user and "What is 2+2?" in user and "[The Start of Assistant's Answer]\n4" in user
    _, two = judge_messages(JudgeRequest(("Q1", "Q2"), ("A1", "A2")))
    assert all(text in two for text in ("Q1", "Q2", "A1", "A2"))
    with pytest.raises(ToolkitError, match="one or two turns"):
        judge_messages(JudgeRequest(("Q1",), ("A1", "A2")))


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        question = body["messages"][-1]["content"]
        reply = {"choices": [{"message": {"content": f"Fine. Rating: [[{len(question) % 9 + 1}]]"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_speaks_the_openai_chat_protocol():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", temperature=0.3)
        texts = judge.judge([JudgeRequest(("Q?",), ("A.",))], seed=7)
        assert parse_rating(texts[0]) is not None
        (sent,) = server.requests
        assert sent["model"] == "judge-model" and sent["seed"] == 7 and sent["temperature"] == 0.3
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    finally:
        server.shutdown()
    with pytest.raises(ToolkitError, match="failed"):
        EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "m", timeout=2).judge([JudgeRequest(("Q",), ("A",))], seed=0)
    with pytest.raises(ToolkitError, match="not http"):
        EndpointJudge("localhost:8000", "m")
