"""Bounded load on loopback against one live local harness: 2,000 requests at 64 concurrent clients,
mixing request sizes (one to four inputs, 1 to 24 new tokens), streamed and whole answers, /score and
the OpenAI routes. Every request must get exactly its own answer (checked by content against the
answer the same request gets alone) or a 503 with Retry-After; none lost, none mixed up; and the
serving process's memory must stay flat (RSS at the end within 10% of after warm-up).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import psutil
import pytest

pytestmark = [pytest.mark.serving, pytest.mark.harness]

REQUESTS = 2000
CLIENTS = 64
WARM_UP = 200
WORDS = ["alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "iris", "jade", "kilo", "lumen"]


def _prompts() -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) + f" {index}" for index in range(30)]


def _post(url: str, payload: Any, timeout: float = 180) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _serving_rss(server: Any) -> int:
    """Resident memory of the serving processes (the server and its workers)."""
    root = psutil.Process(server.process.pid)
    return sum(process.memory_info().rss for process in [root, *root.children(recursive=True)])


class Workload:
    """The requests (each a kind, a prompt list and its new-token count) and their answers when alone."""

    def __init__(self, server: Any) -> None:
        self.server = server
        rng = random.Random(11)
        prompts = _prompts()
        self.plan = []
        for _ in range(REQUESTS):
            kind = rng.choice(["score", "score", "stream", "completion", "chat-stream"])
            inputs = rng.sample(prompts, rng.randint(1, 4)) if kind == "score" else [rng.choice(prompts)]
            self.plan.append((kind, tuple(inputs), rng.choice([1, 4, 12, 24])))
        self.expected: dict[tuple[str, int], str] = {}
        self.chat_expected: dict[tuple[str, int], str] = {}

    def learn_alone(self) -> None:
        """The greedy text of every (prompt, new tokens) pair the plan uses, one request at a time."""
        for kind, inputs, tokens in self.plan:
            for prompt in inputs:
                key = (prompt, tokens)
                if kind == "chat-stream":
                    if key not in self.chat_expected:
                        self.chat_expected[key] = self._alone_chat(prompt, tokens)
                elif key not in self.expected:
                    status, _, body = _post(self.server.scoring_uri, {"query": prompt, "parameters": {"max_new_tokens": tokens}})
                    assert status == 200, body
                    self.expected[key] = json.loads(body)["responses"][0]["generated_text"]

    def _alone_chat(self, prompt: str, tokens: int) -> str:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
        status, _, answer = _post(self.server.base_url + "/v1/chat/completions", body)
        assert status == 200, answer
        return json.loads(answer)["choices"][0]["message"]["content"]

    def run_one(self, index: int) -> str:
        """Send request ``index``; "ok", "busy" (a 503 with Retry-After), or raise on a wrong answer."""
        kind, inputs, tokens = self.plan[index]
        if kind == "score":
            status, headers, body = _post(self.server.scoring_uri, {"query": list(inputs), "parameters": {"max_new_tokens": tokens}})
            if _busy(status, headers):
                return "busy"
            assert status == 200, (status, body[:300])
            texts = [entry["generated_text"] for entry in json.loads(body)["responses"]]
            assert texts == [self.expected[(prompt, tokens)] for prompt in inputs], index
        elif kind == "stream":
            status, headers, body = _post(self.server.scoring_uri, {"query": inputs[0], "stream": True, "parameters": {"max_new_tokens": tokens}})
            if _busy(status, headers):
                return "busy"
            events = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]
            text = "".join(event.get("text", "") for event in events)
            assert events[-1].get("done") and text == events[-1]["entry"]["generated_text"] == self.expected[(inputs[0], tokens)], index
        elif kind == "completion":
            payload = {"prompt": inputs[0], "max_tokens": tokens, "temperature": 0}
            status, headers, body = _post(self.server.base_url + "/v1/completions", payload)
            if _busy(status, headers):
                return "busy"
            assert status == 200, (status, body[:300])
            assert json.loads(body)["choices"][0]["text"] == self.expected[(inputs[0], tokens)], index
        else:
            payload = {"messages": [{"role": "user", "content": inputs[0]}], "max_tokens": tokens, "temperature": 0, "stream": True}
            status, headers, body = _post(self.server.base_url + "/v1/chat/completions", payload)
            if _busy(status, headers):
                return "busy"
            chunks = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
            assert chunks[-1] == "[DONE]", chunks[-2:]
            text = "".join(json.loads(chunk)["choices"][0]["delta"].get("content", "") for chunk in chunks[:-1] if json.loads(chunk)["choices"])
            assert text == self.chat_expected[(inputs[0], tokens)], index
        return "ok"


def _busy(status: int, headers: dict[str, str]) -> bool:
    if status != 503:
        return False
    assert int(headers.get("Retry-After", "0")) >= 1, headers
    return True


def test_2000_requests_at_64_clients_each_get_their_own_answer_and_memory_stays_flat(chat_harness):
    workload = Workload(chat_harness)
    workload.learn_alone()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    rss_after_warm_up: Optional[int] = None

    def one(index: int) -> None:
        try:
            outcome = workload.run_one(index)
        except Exception as exc:  # collected: the test reports every kind of failure at once
            outcome = "failed"
            with lock:
                failures.append(f"{index} {workload.plan[index][0]}: {type(exc).__name__}: {str(exc)[:200]}")
        with lock:
            outcomes[outcome] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(WARM_UP)))
        rss_after_warm_up = _serving_rss(chat_harness)
        list(pool.map(one, range(WARM_UP, REQUESTS)))
    elapsed = time.monotonic() - started
    rss_at_end = _serving_rss(chat_harness)

    assert not failures, "\n".join(failures[:10])
    assert sum(outcomes.values()) == REQUESTS and outcomes["ok"] + outcomes["busy"] == REQUESTS, outcomes
    assert outcomes["ok"] >= REQUESTS * 0.9, outcomes  # the queue (256) holds 64 clients: 503s are rare
    assert rss_at_end <= rss_after_warm_up * 1.10, (rss_after_warm_up, rss_at_end)
    print(f"{REQUESTS} requests at {CLIENTS} clients in {elapsed:.1f} s: {dict(outcomes)}; "
          f"RSS {rss_after_warm_up / 2**20:.0f} -> {rss_at_end / 2**20:.0f} MiB")
