"""The notify core on a manual clock: which events become posts, their text and keys, the rate limit and the
digest, risk transitions and finished jobs; and the runner's webhook retries, on a mock transport."""

from __future__ import annotations

import httpx
import orjson
import pytest

from schemas import SCHEMA_VERSION, common_pb2, outcome_pb2, signal_pb2
from services.jobs.store import JobEvent, JobState
from services.notify.core import Event, NotifyConfig, NotifyState, Post, process
from services.notify.runner import RetryPolicy, Stopped, WebhookSender
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit

SEC = 1_000_000
T0 = 1_700_000_000 * SEC


def sig(n: int, *, symbol: str = "BTCUSDT", decision: int = signal_pb2.LONG, tier: int = signal_pb2.TIER_A,
        venue: int = common_pb2.BINANCE_SPOT) -> signal_pb2.Signal:
    return signal_pb2.Signal(schema_version=SCHEMA_VERSION, signal_id=f"{symbol}:{n}:m1:5", venue=venue,  # type: ignore[arg-type]
                             symbol=symbol, decision=decision, tier=tier, p_up=0.812, horizon_min=5,  # type: ignore[arg-type]
                             estimated_cost_bps=4.0, net_utility_bps=12.34)


def outcome(n: int, risk_state: str, *, net: float = -10.0, exit_us: int = 0) -> outcome_pb2.Outcome:
    return outcome_pb2.Outcome(schema_version=SCHEMA_VERSION, outcome_id=f"o{n}", signal_id=f"o{n}",
                               venue=common_pb2.BINANCE_SPOT, symbol="ETHUSDT", decision=signal_pb2.SHORT,
                               label=outcome_pb2.HIT_STOP, net_return_bps=net, paper_equity=0.98765,
                               risk_state=risk_state, exit_us=exit_us)


def job(job_id: str, state: JobState, *, progress: float = 1.0, message: str = "done") -> JobEvent:
    return JobEvent(event_id="1-0", job_id=job_id, state=state, progress=progress, message=message, ts_us=T0)


def keys(posts: list[Post]) -> list[str]:
    return [p.key for p in posts]


def fresh(**config: object) -> tuple[NotifyState, ManualClock]:
    return NotifyState(config=NotifyConfig(**config)), ManualClock(T0)  # type: ignore[arg-type]


def test_only_long_and_short_at_or_above_the_minimum_tier_are_posted() -> None:
    events = [sig(1), sig(2, decision=signal_pb2.SHORT), sig(3, decision=signal_pb2.WAIT),
              sig(4, tier=signal_pb2.TIER_B), sig(5, tier=signal_pb2.TIER_NONE),
              sig(6, decision=signal_pb2.DECISION_UNSPECIFIED)]
    state, clock = fresh(min_tier="A")
    assert keys(process(events, state, clock)) == ["signal:BTCUSDT:1:m1:5", "signal:BTCUSDT:2:m1:5"]
    assert state.counts["signals_filtered"] == 4
    state_b, _ = fresh(min_tier="B")
    assert keys(process(events, state_b, clock)) == ["signal:BTCUSDT:1:m1:5", "signal:BTCUSDT:2:m1:5",
                                                     "signal:BTCUSDT:4:m1:5"]


def test_signal_text_and_the_two_payload_formats() -> None:
    text = "LONG BTCUSDT tier A p_up=0.81 net 12.3 bps (cost 4.0) 5m horizon — signal BTCUSDT:1:m1:5"
    state, clock = fresh(format="slack")
    [post] = process([sig(1)], state, clock)
    assert (post.kind, post.text, post.payload) == ("signal", text, {"text": text})
    state, clock = fresh(format="discord")
    [post] = process([sig(1)], state, clock)
    assert post.payload == {"content": text, "allowed_mentions": {"parse": []}}
    [usdm] = process([sig(2, venue=common_pb2.BINANCE_USDM, decision=signal_pb2.SHORT, tier=signal_pb2.TIER_A)],
                     state, clock)
    assert usdm.text.startswith("SHORT BTCUSDT perp tier A ")


def test_slack_control_characters_are_escaped_and_long_texts_cut() -> None:
    state, clock = fresh(format="slack")
    [post] = process([job("j1", JobState.FAILED, progress=0.4, message="<!channel> a & b " + "x" * 3000)],
                     state, clock)
    assert post.payload["text"].startswith("JOB j1 failed at 40%: &lt;!channel&gt; a &amp; b xxx")
    assert post.payload["text"].endswith("x…")
    assert len(post.text) > 3000  # the core keeps the whole text; only the payload is cut to fit the hook


def test_a_full_bucket_then_one_digest_with_exact_counts_once_a_token_is_back() -> None:
    # 6 per minute: a token every 10 s; burst 0.5: three tokens at most.
    state, clock = fresh(rate_per_min=6.0, burst=0.5)
    events = [sig(1), sig(2, symbol="ETHUSDT"), sig(3, decision=signal_pb2.SHORT),
              sig(4), sig(5, symbol="ETHUSDT", decision=signal_pb2.SHORT), sig(6), sig(7, symbol="ETHUSDT"),
              sig(8, decision=signal_pb2.SHORT)]
    assert keys(process(events, state, clock)) == ["signal:BTCUSDT:1:m1:5", "signal:ETHUSDT:2:m1:5",
                                                   "signal:BTCUSDT:3:m1:5"]
    assert (state.digest.count, state.counts["signals_digested"], state.backlog) == (5, 5, 1)
    clock.advance_us(9 * SEC)
    assert process([], state, clock) == []
    clock.advance_us(1 * SEC)
    [digest] = process([], state, clock)
    assert (digest.kind, digest.key) == ("digest", "digest:signal:BTCUSDT:4:m1:5:5")
    assert digest.text == "5 more signals: 3 LONG, 2 SHORT on BTCUSDT, ETHUSDT"
    assert (state.digest.count, state.backlog) == (0, 0)
    assert process([], state, clock) == []
    clock.advance_us(10 * SEC)
    assert keys(process([sig(9)], state, clock)) == ["signal:BTCUSDT:9:m1:5"]  # back to one post per signal
    clock.advance_us(10 * SEC)
    assert keys(process([sig(10), sig(11, symbol="SOLUSDT")], state, clock)) == ["signal:BTCUSDT:10:m1:5"]
    clock.advance_us(10 * SEC)
    assert [p.text for p in process([], state, clock)] == ["1 more signal: 1 LONG on SOLUSDT"]
    assert state.counts == {"signal_posts": 5, "signals_digested": 6, "digest_posts": 2}


def test_the_bucket_refills_to_its_size_and_no_further() -> None:
    state, clock = fresh(rate_per_min=60.0, burst=0.05)  # three tokens, one a second
    assert len(process([sig(i) for i in range(3)], state, clock)) == 3
    clock.advance_us(3600 * SEC)
    assert len(process([sig(i) for i in range(3, 10)], state, clock)) == 3
    assert state.digest.count == 4


def test_a_slow_rate_still_has_one_token() -> None:
    state, clock = fresh(rate_per_min=0.5, burst=1.0)
    assert len(process([sig(1), sig(2)], state, clock)) == 1
    clock.advance_us(119 * SEC)
    assert process([], state, clock) == []
    clock.advance_us(1 * SEC)
    assert [p.kind for p in process([], state, clock)] == ["digest"]


def test_risk_and_job_posts_go_before_signals_and_wait_for_tokens_in_order() -> None:
    state, clock = fresh(rate_per_min=6.0, burst=1 / 6)  # one token, the next in 10 s
    assert keys(process([sig(1)], state, clock)) == ["signal:BTCUSDT:1:m1:5"]
    events: list[Event] = [sig(2), outcome(1, "NORMAL"), outcome(2, "CAUTIOUS"), job("j1", JobState.SUCCEEDED),
                           sig(3)]
    assert process(events, state, clock) == []
    assert (len(state.pending), state.digest.count, state.backlog) == (2, 2, 3)
    order: list[str] = []
    for _ in range(3):
        clock.advance_us(10 * SEC)
        order += keys(process([], state, clock))
    assert order == ["risk:NORMAL->CAUTIOUS:o2", "job:j1:succeeded", "digest:signal:BTCUSDT:2:m1:5:2"]
    assert state.backlog == 0


def test_risk_transitions_post_each_change_and_a_first_state_only_when_not_normal() -> None:
    state, clock = fresh()
    posts = process([outcome(1, "NORMAL"), outcome(2, "NORMAL"), outcome(3, "CAUTIOUS"), outcome(4, "CAUTIOUS"),
                     outcome(5, ""), outcome(6, "SHUTDOWN"), outcome(7, "NORMAL")], state, clock)
    assert keys(posts) == ["risk:NORMAL->CAUTIOUS:o3", "risk:CAUTIOUS->SHUTDOWN:o6", "risk:SHUTDOWN->NORMAL:o7"]
    assert posts[0].text == ("RISK NORMAL -> CAUTIOUS after SHORT ETHUSDT HIT_STOP net -10.0 bps, paper equity "
                             "0.9877 — outcome o3")
    assert state.risk_state == "NORMAL"
    restarted, _ = fresh()
    [first] = process([outcome(8, "RISK_AVERSE")], restarted, clock)
    assert first.key == "risk:UNKNOWN->RISK_AVERSE:o8"
    assert first.text.startswith("RISK RISK_AVERSE (first seen) after SHORT ETHUSDT")


def test_an_older_outcome_from_another_partition_is_no_transition_back() -> None:
    """Outcomes of different symbols interleave across partitions: o3 (exit 15) arrives after o2 (exit 20) and
    still says NORMAL; it is older than the CAUTIOUS state already known, so no CAUTIOUS -> NORMAL -> CAUTIOUS."""
    state, clock = fresh()
    posts = process([outcome(1, "NORMAL", exit_us=10), outcome(2, "CAUTIOUS", exit_us=20),
                     outcome(3, "NORMAL", exit_us=15), outcome(4, "NORMAL", exit_us=30)], state, clock)
    assert keys(posts) == ["risk:NORMAL->CAUTIOUS:o2", "risk:CAUTIOUS->NORMAL:o4"]
    assert (state.risk_state, state.risk_as_of_us) == ("NORMAL", 30)
    assert NotifyState.from_json(state.to_json(), state.config).risk_as_of_us == 30


def test_only_finished_jobs_are_posted() -> None:
    state, clock = fresh()
    posts = process([job("j1", JobState.QUEUED, progress=0.0, message="queued"),
                     job("j1", JobState.RUNNING, progress=0.0, message="running on worker-0"),
                     job("j1", JobState.SUCCEEDED), job("j2", JobState.FAILED, progress=0.25, message="boom")],
                    state, clock)
    assert [(p.key, p.text) for p in posts] == [("job:j1:succeeded", "JOB j1 succeeded: done"),
                                                ("job:j2:failed", "JOB j2 failed at 25%: boom")]


def test_duplicates_cost_no_token_and_keys_are_deterministic() -> None:
    events: list[Event] = [sig(1), sig(1), outcome(1, "NORMAL"), outcome(2, "SHUTDOWN"), outcome(2, "SHUTDOWN"),
                           job("j1", JobState.FAILED), job("j1", JobState.FAILED)]
    first, clock = fresh(rate_per_min=60.0, burst=0.05)
    posts = process(events, first, clock)
    assert keys(posts) == ["risk:NORMAL->SHUTDOWN:o2", "job:j1:failed", "signal:BTCUSDT:1:m1:5"]
    assert first.counts["duplicates"] == 3
    clock.advance_us(3600 * SEC)
    # Redelivered: every key and outcome already seen; an old NORMAL outcome does not fake SHUTDOWN -> NORMAL.
    assert process(events, first, clock) == []
    assert first.risk_state == "SHUTDOWN"
    second, clock2 = fresh(rate_per_min=60.0, burst=0.05)
    assert keys(process(events, second, clock2)) == keys(posts)


def test_the_state_survives_a_round_trip_through_json() -> None:
    state, clock = fresh(rate_per_min=6.0, burst=1 / 6, format="discord")
    posts = process([sig(1), sig(2, symbol="ETHUSDT", decision=signal_pb2.SHORT), outcome(1, "CAUTIOUS"),
                     job("j1", JobState.SUCCEEDED)], state, clock)
    assert keys(posts) == ["risk:UNKNOWN->CAUTIOUS:o1"]  # the one token goes to the risk post
    doc = orjson.loads(orjson.dumps(state.to_json()))
    restored = NotifyState.from_json(doc, NotifyConfig(rate_per_min=6.0, burst=1 / 6, format="slack"))
    assert (restored.risk_state, restored.digest.count, len(restored.pending)) == ("CAUTIOUS", 2, 1)
    assert restored.tokens == state.tokens
    assert process([sig(1), outcome(1, "CAUTIOUS")], restored, clock) == []  # a redelivery after a restart
    payloads = []
    for _ in range(3):
        clock.advance_us(10 * SEC)
        payloads += [p.payload for p in process([], restored, clock)]
    assert payloads == [{"text": "JOB j1 succeeded: done"},
                        {"text": "2 more signals: 1 LONG, 1 SHORT on BTCUSDT, ETHUSDT"}]


def test_config_from_settings() -> None:
    settings = Settings.with_overrides(notify_format="discord", notify_min_tier="B", notify_rate_per_min=30.0,
                                       notify_burst=2.0)
    config = NotifyConfig.from_settings(settings)
    assert config == NotifyConfig(format="discord", min_tier="B", rate_per_min=30.0, burst=2.0)
    assert config.capacity == 60.0


# The runner's webhook sender, against httpx's in-process mock transport (no socket): which answers are retried.

def sender_for(answers: list[httpx.Response | Exception]) -> tuple[WebhookSender, list[float], list[bytes]]:
    waits: list[float] = []
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    client = httpx.Client(transport=httpx.MockTransport(handle))
    policy = RetryPolicy(max_attempts=3, backoff_start_s=0.5, backoff_max_s=30.0)
    return WebhookSender(client, "http://hook.invalid/x", policy, ManualClock(T0), wait), waits, bodies


def test_sender_retries_5xx_and_connection_errors_with_backoff_then_gives_the_reason() -> None:
    sender, waits, bodies = sender_for([httpx.Response(502), httpx.ConnectError("refused"), httpx.Response(200)])
    assert sender.send({"text": "hi"}) is None
    assert (waits, [orjson.loads(b) for b in bodies]) == ([0.5, 1.0], [{"text": "hi"}] * 3)
    sender, waits, _ = sender_for([httpx.Response(500, text="oops")] * 3)
    assert sender.send({"text": "hi"}) == "HTTP 500: oops (after 3 attempts)"
    assert waits == [0.5, 1.0]


def test_sender_honours_retry_after_and_does_not_retry_other_4xx() -> None:
    sender, waits, _ = sender_for([httpx.Response(429, headers={"Retry-After": "2"}),
                                   httpx.Response(429, json={"retry_after": 0.25}), httpx.Response(204)])
    assert sender.send({"text": "hi"}) is None
    assert waits == [2.0, 0.25]
    sender, waits, _ = sender_for([httpx.Response(404, text="Unknown Webhook")])
    assert sender.send({"text": "hi"}) == "HTTP 404: Unknown Webhook"
    assert waits == []


def test_sender_stops_waiting_when_the_process_stops() -> None:
    sender, _, _ = sender_for([httpx.Response(503)])
    sender.wait = lambda seconds: True
    with pytest.raises(Stopped):
        sender.send({"text": "hi"})
