"""Prometheus metrics of a real coordinator, scraped over HTTP after real prompts."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port, wait_until
from lamcontrol.protocol import ErrorRecord


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_a_few_prompts(lam):
    port = free_port()
    dead = free_port()  # nothing listens here: the LLM is unavailable and the offline grammar answers
    lam.coordinator(extra_config=f'metrics_port = {port}\n[groq]\napi_key = "test"\n'
                                 f'base_url = "http://127.0.0.1:{dead}"\nmax_retries = 0\ntimeout = 2.0\n')
    lam.agent("metered", "echo")
    wait_until(lambda: scrape(port).get(("lam_agents_online", ())) == 1, 15, "one agent online")
    for _ in range(2):
        assert lam.send("echo say hello").status == "succeeded"
    assert lam.send("x").status == "ignored"
    assert lam.send("please say hello in the echo").status in ("succeeded", "ignored")  # understood offline
    lam.publish_raw(lam.topics.prompts, b'{"prompt": 42}')  # refused on lam/errors
    lam.recorder.wait_for(ErrorRecord, lam.topics.errors)

    samples = wait_until(lambda: (s := scrape(port)).get(("lam_errors_total", (("component", "coordinator"),)))
                         and s, 15, "the error counted")
    assert samples[("lam_prompts_total", (("status", "succeeded"),))] >= 2
    assert samples[("lam_prompts_total", (("status", "ignored"),))] >= 1
    latency = (("capability", "echo"), ("state", "succeeded"))
    assert samples[("lam_task_seconds_count", latency)] >= 2
    assert samples[("lam_task_seconds_sum", latency)] > 0
    assert samples[("lam_task_seconds_bucket", (*latency[:1], ("le", "+Inf"), *latency[1:]))] >= 2
    assert samples[("lam_parser_fallbacks_total", (("parser", "sentences"),))] >= 1
    assert samples[("lam_agents_online", ())] == 1
    assert samples[("lam_prompts_running", ())] == 0

