"""The run's teacher ledger: its rules (no Ray), then the run-wide promise with real Ray actors.

The Ray tests start a ledger actor and several `TeacherWorker` actors (each its own process, its own
teacher library and HTTP client, as verl's reward workers) against the fault server on 127.0.0.1, and
check the promises from what the server saw, independently of the ledger's own counters:
the money the server's answers cost <= max_cost_usd; no window holds more requests than the limit; one
process opens the cache file; a rerun from the cache makes no call; a killed worker or a restarted
ledger does not break the budget; a 401 or a rejected parameter stops every worker's queued calls.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from omniopd_verl.teachers.ledger import LedgerCore, LedgerSettings
from omniopd_verl.teachers.ledger.limits import CircuitBreaker, FailureGuard, RateWindow
from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server

REPO = Path(__file__).resolve().parents[2]
PRICE_IN, PRICE_OUT = 0.001, 0.002
PRICES = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
WORDS = 8  # ScriptedGenerator's words per sample (one word = one token for the fault server's usage)


# ------------------------------------------------------------------------------------------- the rules


def test_rate_window_never_holds_more_than_the_limit_in_any_window():
    rng = random.Random(0)
    window = RateWindow(5, window_s=1.0)
    now, granted = 0.0, []
    for key in range(400):
        now += rng.choice([0.0, 0.01, 0.05, 0.3])
        wait = window.wait_s(1.0, now)
        if wait == 0:
            window.add(key, 1.0, now)
            granted.append(now)
        else:
            assert wait > 0
    # brute force: every half-open window [t, t + 1) starting at a grant holds at most 5 grants
    assert max(sum(1 for u in granted if t <= u < t + 1.0) for t in granted) == 5
    assert len(granted) > 50


def test_rate_window_says_how_long_until_room():
    window = RateWindow(10, window_s=60.0)
    window.add(1, 6, 0.0)
    window.add(2, 4, 30.0)
    assert window.wait_s(1, 31.0) == pytest.approx(29.0)  # the first entry expires at 60
    assert window.wait_s(5, 31.0) == pytest.approx(29.0)
    assert window.wait_s(7, 31.0) == pytest.approx(59.0)  # needs both gone
    assert window.wait_s(50, 90.0) == 0.0  # larger than the window: charged the whole window, once it is empty


def test_circuit_breaker_opens_after_consecutive_transients_and_doubles():
    breaker = CircuitBreaker(threshold=3, base_s=1.0, max_s=4.0)
    for t in (0.0, 0.1):
        breaker.transient(t)
    assert breaker.wait_s(0.2) == 0
    breaker.transient(0.2)
    assert breaker.wait_s(0.2) == pytest.approx(1.0)
    breaker.transient(1.5)  # the probe after it closed fails: reopen at once, for twice as long
    assert breaker.wait_s(1.5) == pytest.approx(2.0)
    breaker.success()
    breaker.transient(5.0)
    assert breaker.wait_s(5.0) == 0 and breaker.trips == 2


def test_failure_guard_names_the_most_common_cause():
    guard = FailureGuard(0.5, min_requests=8)
    assert guard.record([None, "HTTP 400: bad model", None, "HTTP 500"]) is None
    message = guard.record(["HTTP 400: bad model"] * 4)
    assert message == (
        "the teacher failed 6 of the last 8 requests (75%), above omniopd.teacher.max_failure_rate=0.5; the cause "
        "seen most (5 times): HTTP 400: bad model. Fix the teacher (or raise max_failure_rate) and rerun: answers "
        "paid for so far are cached (if omniopd.teacher.cache_path is set)."
    )


def test_core_budget_stop_is_final_and_every_caller_gets_it():
    core = LedgerCore(LedgerSettings(max_cost_usd=1.0))
    [a] = core.admit([{"usd": 0.6, "tokens": 0}])
    assert core.admit([{"usd": 0.6, "tokens": 0}]) == [{"wait": 0.25}]  # fits only after the first settles
    core.settle([{"id": a["id"], "outcome": "ok", "cost_usd": 0.5}])
    [b] = core.admit([{"usd": 0.6, "tokens": 0}])  # 0.5 left: refused, final
    assert b["stop"] == "budget" and "spent $0.500000 of omniopd.teacher.max_cost_usd=$1" in b["message"]
    assert core.admit([{"usd": 0.01, "tokens": 0}])[0] == b  # no smaller call squeezed in after the stop


def test_core_concurrency_is_run_wide():
    core = LedgerCore(LedgerSettings(max_concurrency=2))
    replies = core.admit([{"usd": None, "tokens": 0}] * 3)
    assert ["id" in r for r in replies] == [True, True, False]
    assert core.admit([{"usd": None, "tokens": 0, "slot": False}])[0].get("id")  # local compute takes no slot


def test_rate_window_expires_entries_dated_ahead_by_their_date_not_their_order():
    rng = random.Random(1)
    window = RateWindow(1e9, window_s=1.0)
    entries = {}
    now = 0.0
    for key in range(300):
        now += rng.choice([0.0, 0.01, 0.2])
        dated = now + rng.choice([0.0, 0.0, 0.5])  # a lease's entries are dated at the end of its time
        amount = float(rng.randint(1, 5))
        window.add(key, amount, dated)
        entries[key] = (dated, amount)
        if rng.random() < 0.1:  # a leased grant handed back unused
            back = rng.choice(list(entries))
            window.adjust(back, 0.0)
            entries[back] = (entries[back][0], 0.0)
        naive = sum(a for t, a in entries.values() if t > now - 1.0)  # every entry counts until its date + 1 s
        assert window.in_window(now) == pytest.approx(naive)


def healthy(core: LedgerCore) -> None:
    """One call admitted and settled ok (leases are granted only after a success)."""
    [grant] = core.admit([{"usd": None, "tokens": 0}])
    core.settle([{"id": grant["id"], "outcome": "ok"}])


def test_core_leases_only_far_from_every_limit():
    # no lease before the run's first success: a wrong key fails from the first call, and every queued call
    # must then meet the stop in the ledger
    core = LedgerCore(LedgerSettings(max_concurrency=8))
    assert "lease" not in core.admit([{"usd": None, "tokens": 0, "lease": 8}])[0]

    # concurrency: a lease takes at most half of max_concurrency, counting the slots in use
    core = LedgerCore(LedgerSettings(max_concurrency=8))
    healthy(core)
    [a] = core.admit([{"usd": None, "tokens": 0, "lease": 8}])
    assert len(a["lease"]) == 3  # 8 // 2 - the call itself
    [b] = core.admit([{"usd": None, "tokens": 0, "lease": 8}])
    assert "id" in b and "lease" not in b  # half the slots are taken: admitted one by one, as without leases
    assert core.status()["in_flight"] == 5
    core.settle([{"id": key, "outcome": "unused"} for key in a["lease"]])
    assert core.status()["in_flight"] == 2 and core.metrics()["teacher_run/calls"] == 1  # unused: not calls

    # budget: leased grants are sized 1.25 x the ask and take at most half of what is left
    core = LedgerCore(LedgerSettings(max_cost_usd=1.0, max_concurrency=1000))
    healthy(core)
    [a] = core.admit([{"usd": 0.05, "tokens": 0, "lease": 100}])
    assert a["lease_usd"] == pytest.approx(0.0625)
    assert len(a["lease"]) == int((0.95 / 2) // 0.0625) == 7
    assert core.status()["reserved_usd"] == pytest.approx(0.05 + 7 * 0.0625)

    # rate windows: half of the window, the lease's entries dated lease_ttl_s ahead
    core = LedgerCore(LedgerSettings(requests_per_minute=10, max_concurrency=1000), clock=lambda: 100.0)
    healthy(core)
    [a] = core.admit([{"usd": None, "tokens": 0, "lease": 8}])
    assert len(a["lease"]) == 3  # 10 / 2 - the healthy call - this one
    assert sorted(t for t, _ in core._rpm._used.values()) == [100.0] * 2 + [100.0 + a["lease_ttl_s"]] * 3

    # the last call failed, or the run stopped: no lease
    core = LedgerCore(LedgerSettings(max_concurrency=100))
    healthy(core)
    [a] = core.admit([{"usd": None, "tokens": 0}])
    core.settle([{"id": a["id"], "outcome": "transient"}])
    assert "lease" not in core.admit([{"usd": None, "tokens": 0, "lease": 8}])[0]
    core.stop("auth", "HTTP 401")
    assert core.admit([{"usd": None, "tokens": 0, "lease": 8}])[0]["stop"] == "auth"


def test_state_file_continues_the_spend_and_charges_unsettled_calls_on_resume(tmp_path):
    state = tmp_path / "run.ledger.json"
    settings = LedgerSettings(max_cost_usd=1.0, save_every_s=0.0)  # every change on disk at once
    core = LedgerCore(settings, run_id="r1", state_path=state)
    a, b = core.admit([{"usd": 0.2, "tokens": 0}, {"usd": 0.1, "tokens": 0}])
    core.settle([{"id": a["id"], "outcome": "ok", "cost_usd": 0.15}])
    core.record([{"cause": None, "cached": False, "retries": 1}])
    # a restart of the same run (workers alive): b is still in flight and settles later
    restarted = LedgerCore(settings, run_id="r1", state_path=state, restarted=True)
    assert restarted.status()["spent_usd"] == pytest.approx(0.15)
    assert restarted.status()["reserved_usd"] == pytest.approx(0.1)
    restarted.settle([{"id": b["id"], "outcome": "ok", "cost_usd": 0.05}])
    assert restarted.status()["spent_usd"] == pytest.approx(0.2) and restarted.status()["reserved_usd"] == 0
    # a resumed run: a call in flight when the run ended may have been billed, so it counts in full
    [c] = restarted.admit([{"usd": 0.3, "tokens": 0}])
    resumed = LedgerCore(settings, run_id="r1", state_path=state)
    assert resumed.status()["spent_usd"] == pytest.approx(0.5)
    assert resumed.metrics()["teacher_run/retries"] == 1 and resumed.metrics()["teacher_run/calls"] == 2
    assert json.loads(state.read_text())["spent_usd"] == pytest.approx(0.5)
    assert c["id"] not in {int(k) for k in json.loads(state.read_text())["reservations"]}


def test_unsettled_reservation_expires_at_its_worst_case():
    clock = [0.0]
    core = LedgerCore(LedgerSettings(max_cost_usd=1.0, reservation_expiry_s=10), clock=lambda: clock[0])
    core.admit([{"usd": 0.4, "tokens": 0}])
    clock[0] = 11.0
    assert core.admit([{"usd": 0.7, "tokens": 0}])[0]["stop"] == "budget"  # 0.6 left after the expiry
    assert core.metrics()["teacher_run/expired_reservations"] == 1
    assert core.status()["spent_usd"] == pytest.approx(0.4)


# ------------------------------------------------------------------------------------ real Ray actors


@pytest.fixture(scope="module")
def ray_session():
    import ray

    # the workers import this checkout, not an installed copy
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()


def teacher_dict(server, **overrides):
    base = dict(
        name="openai_completions",
        model="local-teacher",
        api_base=server.url,
        max_retries=0,
        timeout_s=20.0,
        options=dict(PRICES),
    )
    base.update(overrides)
    return base


def workers(ray, count, teacher, run_id, state_path=None, cache_path=None, overrides=None):
    from omniopd_verl.testing.ledger_workers import TeacherWorker

    actor = ray.remote(TeacherWorker).options(num_cpus=0)
    handles = [
        actor.remote(teacher, run_id, None if state_path is None else str(state_path), cache_path, overrides)
        for _ in range(count)
    ]
    ray.get([h.pid.remote() for h in handles])
    return handles


def served_usd(server) -> float:
    """What the server's answers cost at the price table, from the request log (its usage = words)."""
    total = 0.0
    for record in server.requests:
        if record.path == "/v1/completions" and record.status == 200:
            prompt_words = len(record.body["prompt"].split())
            completion_words = record.body["n"] * max(1, min(WORDS, record.body["max_tokens"]))
            total += prompt_words * PRICE_IN + completion_words * PRICE_OUT
    return total


def ledger_status(ray, run_id):
    from omniopd_verl.teachers.ledger.actor import actor_name

    return ray.get(ray.get_actor(actor_name(run_id)).call.remote("status", None))


def test_budget_and_cache_hold_across_worker_processes(ray_session, tmp_path):
    ray = ray_session
    cache = str(tmp_path / "cache.sqlite")
    with serve_fault_server(generator=ScriptedGenerator(words=WORDS), latency_s=0.05) as server:
        teacher = teacher_dict(server, max_cost_usd=0.15, max_concurrency=4, cache_path=cache)
        pool = workers(ray, 3, teacher, "budget-run", tmp_path / "state.json", cache)
        outs = ray.get([w.sample.remote(start=10 * k, count=10, n=2) for k, w in enumerate(pool)])
        status = ledger_status(ray, "budget-run")
        worker_pids = ray.get([w.pid.remote() for w in pool])
        from omniopd_verl.testing.ledger_workers import open_paths

        openers = [pid for pid in [*worker_pids, status["pid"]] if any(p.startswith(cache) for p in open_paths(pid))]
        served = served_usd(server)
        answered = [r.body["prompt"] for r in server.requests if r.path == "/v1/completions" and r.status == 200]
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert status["module"].startswith(str(REPO))  # the actors ran this checkout
    # one worker alone would have paid for all 10 of its requests ($0.06 each at most): the budget is the run's
    assert served <= 0.15 + 1e-12, served
    assert status["spent_usd"] == pytest.approx(served, abs=1e-9)
    stopped = [o["stopped"] for o in outs if o["stopped"]]
    assert stopped and all(s[0] == "TeacherBudgetExceeded" for s in stopped)
    assert openers == [status["pid"]]  # only the ledger's process opens the SQLite file
    from omniopd_verl.teachers.cache import TeacherCache

    # read in the ledger's journal mode: a WAL reader would switch the file to WAL under the live ledger, and the
    # rerun's ledger could then not switch it back while the first ledger holds it ('database is locked')
    assert TeacherCache(cache, wal=False).count() == len(answered) > 0  # every paid answer is stored

    # rerun from the cache (a new run id: a fresh budget): the answered requests again, 0 calls (the same
    # address: who answers is part of the cache key)
    with serve_fault_server(generator=ScriptedGenerator(words=WORDS), port=port) as server:
        [w] = workers(ray, 1, teacher_dict(server, cache_path=cache), "rerun", None, cache)
        for prompt in answered:
            i = int(prompt.split("?")[0].removeprefix("Question "))
            assert ray.get(w.sample.remote(start=i, count=1, n=2)) == {"ok": 1, "failed": 0, "stopped": None}
        assert [r.path for r in server.requests if r.path == "/v1/completions"] == []


def test_leased_admissions_keep_the_budget_and_go_back_unused(ray_session):
    ray = ray_session
    with serve_fault_server(generator=ScriptedGenerator(words=WORDS), latency_s=0.1) as server:
        teacher = teacher_dict(server, max_cost_usd=0.6, max_concurrency=64)
        # a lease long enough that a starved worker process still uses it (0.5 s passes unused on a loaded machine)
        pool = workers(ray, 2, teacher, "lease-run", overrides={"lease_ttl_s": 30.0})
        # no lease before the run's first success: one settled answer per worker first, so that the leases are
        # asked for while little is in flight (not a race between the first answer and the budget's half)
        assert (
            ray.get([w.sample.remote(start=100 * k + 99, count=1, n=2) for k, w in enumerate(pool)])
            == [{"ok": 1, "failed": 0, "stopped": None}] * 2
        )
        # each request in its own sample() call, 20 ms apart, overlapping (each takes >= 100 ms): as verl calls
        # the reward manager
        outs = ray.get([w.sample.remote(start=100 * k, count=40, n=2, stagger_s=0.02) for k, w in enumerate(pool)])
        leased = sum(ray.get([w.leased_admits.remote() for w in pool]))
        status = ledger_status(ray, "lease-run")
        served = served_usd(server)
    assert leased > 0, status  # some calls were admitted without a round trip to the ledger
    assert all(o["stopped"] and o["stopped"][0] == "TeacherBudgetExceeded" for o in outs)  # 80 calls cost ~$3
    assert served <= 0.6 + 1e-9  # an honest server: the budget is never exceeded, leases or not
    assert status["spent_usd"] == pytest.approx(served)
    assert status["in_flight"] == 0 and status["reserved_usd"] == pytest.approx(0.0, abs=1e-12)  # all handed back


def test_the_plugin_is_warmed_before_the_first_admission_once_per_event_loop():
    """A grant is sent at once: the SDK's import and client (seconds on a loaded machine) come before it."""
    import asyncio

    from omniopd_verl import registry
    from omniopd_verl.config import TeacherConfig
    from omniopd_verl.testing.ledger_workers import request

    with serve_fault_server(generator=ScriptedGenerator(words=WORDS)) as server:
        teacher = registry.create_teacher(TeacherConfig(**teacher_dict(server)))
        seen = []
        warm = teacher.plugin.warm

        async def recording_warm():
            loop = asyncio.get_running_loop()
            seen.append(
                (
                    teacher.ledger.metrics()["teacher_run/calls"],
                    teacher.ledger.status()["in_flight"],
                    loop in teacher.plugin._clients,
                )
            )
            await warm()

        teacher.plugin.warm = recording_warm
        for _ in range(2):  # two event loops (an engine may asyncio.run once per step): warmed once in each
            results = asyncio.run(teacher.sample([request(i, 1) for i in range(3)]))
            assert all(r.texts for r in results)
    assert seen == [(0, 0, False), (3, 0, False)]  # before this loop's first grant and its client, each time


def test_requests_per_window_hold_across_worker_processes(ray_session, tmp_path):
    ray = ray_session
    with serve_fault_server(generator=ScriptedGenerator(words=WORDS)) as server:
        teacher = teacher_dict(server, requests_per_minute=4)
        pool = workers(ray, 3, teacher, "rpm-run", overrides={"window_s": 1.0})  # 4 per 1 s window
        # each worker's first call opens its HTTP connection (up to ~0.6 s between the grant and the server
        # seeing it on a loaded machine): made before the measured calls, then the window is left to empty
        assert all(
            o["ok"] == 1 for o in ray.get([w.sample.remote(start=100 + k, count=1, n=1) for k, w in enumerate(pool)])
        )
        time.sleep(1.2)
        warm = len(server.requests)
        start = time.monotonic()
        outs = ray.get([w.sample.remote(start=10 * k, count=4, n=1) for k, w in enumerate(pool)])
        elapsed = time.monotonic() - start
        arrivals = sorted(r.time for r in server.requests[warm:])
    assert all(o["ok"] == 4 for o in outs)
    assert len(arrivals) == 12
    # per-worker limiters would let 12 through at once; the run-wide window lets 4 per second
    # (granted >= 1 s apart; arrivals at the server carry each client's own delay on a loaded machine)
    assert all(b - a >= 0.7 for a, b in zip(arrivals, arrivals[4:], strict=False)), arrivals
    assert elapsed >= 1.8


def test_a_401_stops_the_calls_every_worker_has_queued(ray_session, tmp_path, monkeypatch):
    ray = ray_session
    with serve_fault_server(generator=ScriptedGenerator(), api_key="sk-right") as server:
        teacher = teacher_dict(server, max_concurrency=1, api_key_env="LEDGER_TEST_KEY")
        from omniopd_verl.testing.ledger_workers import TeacherWorker

        actor = ray.remote(TeacherWorker).options(num_cpus=0, runtime_env={"env_vars": {"LEDGER_TEST_KEY": "sk-wrong"}})
        pool = [actor.remote(teacher, "auth-run", None, None, None) for _ in range(3)]
        outs = ray.get([w.sample.remote(start=10 * k, count=4, n=1) for k, w in enumerate(pool)])
        sent = len(server.requests)
    assert sent == 1  # 12 queued across 3 workers, one slot: only the first was sent
    assert all(o["stopped"][0] == "TeacherAuthError" for o in outs)
    assert all("HTTP 401" in o["stopped"][1] and "sk-wrong" not in o["stopped"][1] for o in outs)


def test_a_rejected_parameter_stops_at_the_first_call(ray_session):
    ray = ray_session
    message = "Unsupported parameter: 'top_p' is not supported with this model."
    faults = [Fault("bad_request", times=100, message=message)]
    with serve_fault_server(generator=ScriptedGenerator(), faults=faults) as server:
        pool = workers(ray, 2, teacher_dict(server, max_concurrency=1), "rejected-run")
        outs = ray.get([w.sample.remote(start=10 * k, count=3, n=1) for k, w in enumerate(pool)])
        sent = len(server.requests)
    assert sent == 1
    for out in outs:
        kind, text = out["stopped"]
        assert kind == "TeacherRequestRejected"
        assert text.startswith(
            "the openai_completions teacher (model 'local-teacher') rejects the parameter 'top_p' (HTTP 400)"
        )
        assert "Fix: stop sending 'top_p' (omniopd.teacher.top_p" in text


def test_failure_rate_guard_stops_every_worker_even_with_on_failure_drop(ray_session):
    ray = ray_session
    faults = [Fault("bad_request", times=1000, message="model not found: local-teacher-typo")]
    with serve_fault_server(generator=ScriptedGenerator(), faults=faults) as server:
        pool = workers(ray, 2, teacher_dict(server, on_failure="drop", max_concurrency=2), "guard-run")
        outs = ray.get([w.sample.remote(start=10 * k, count=10, n=1) for k, w in enumerate(pool)])
        sent = len(server.requests)
    assert sent < 20  # stopped after the guard's minimum, not after every request failed
    for out in outs:
        kind, text = out["stopped"]
        assert kind == "TeacherRunStopped"
        assert "above omniopd.teacher.max_failure_rate=0.5; the cause seen most" in text
        assert "model not found: local-teacher-typo" in text


def test_killed_worker_and_restarted_ledger_keep_the_budget(ray_session, tmp_path):
    ray = ray_session
    from omniopd_verl.teachers.ledger import LedgerSettings
    from omniopd_verl.teachers.ledger.actor import actor_name, ensure_run_ledger

    state = tmp_path / "state.json"
    cache = str(tmp_path / "cache.sqlite")
    with serve_fault_server(generator=ScriptedGenerator(words=WORDS), latency_s=1.0) as server:
        teacher = teacher_dict(server, max_cost_usd=0.5, max_concurrency=4, cache_path=cache)
        from omniopd_verl.config import TeacherConfig

        # the driver creates the ledger first (short expiry, so the killed worker's calls are charged soon)
        settings = LedgerSettings.from_teacher_config(TeacherConfig(**teacher), reservation_expiry_s=3.0)
        # (it keeps the handle: a named actor ends with its owner's last handle)
        driver_handle = ensure_run_ledger(
            settings, "kill-run", state_path=str(state), cache_path=cache, pin_to_this_node=True
        )
        victim, survivor = workers(ray, 2, teacher, "kill-run", state, cache)
        victim.sample.remote(start=0, count=4, n=2)
        time.sleep(0.5)  # its 4 calls are in flight
        ray.kill(victim)
        # the ledger process dies too; Ray restarts it and it reloads its state file
        ledger = ray.get_actor(actor_name("kill-run"))
        before = ray.get(ledger.call.remote("status", None))
        ray.kill(ledger, no_restart=False)
        time.sleep(3.5)  # past the expiry: the victim's reservations are charged at their worst case
        out = ray.get(survivor.sample.remote(start=100, count=20, n=2))
        after = ledger_status(ray, "kill-run")
        served = served_usd(server)
    assert driver_handle.run_id == "kill-run"
    assert before["in_flight"] == 4 and after["pid"] != before["pid"]
    assert out["stopped"][0] == "TeacherBudgetExceeded"
    assert served <= 0.5 + 1e-12  # the server answered the victim's calls too: still within the budget
    assert after["spent_usd"] >= served - 1e-9  # everything it served is counted (the victim's at worst case)
