#!/usr/bin/env python3
"""Josephine, the design document's TrueMark worker, in Python with the standard library only.

    TARGET_USER_ID=user_123 WORKER_NAME=Josephine CALI_X_ONE_API=http://localhost:8003 \\
        WORKER_PORT=8080 python3 examples/python/worker.py

It does what the design document's snippet does (register, then heartbeat), and what the
snippet does not:

- sends its serial number with every heartbeat, so a newer deployment of the same name
  (answer 409) stops it instead of two processes beating for one name;
- registers again by itself when a heartbeat is answered 404 (the registry lost it) or 410
  (its name was deregistered while it still runs);
- beats on the interval the registry asks for (`heartbeat_interval_secs`), shortened by a
  random jitter so a fleet started together does not beat in lockstep;
- backs off exponentially (with jitter, honouring Retry-After) while the registry is
  unreachable, overloaded (429) or failing (5xx), including at start-up;
- takes `restart` commands from heartbeat answers, restarts its work loop, and acknowledges
  them on the next heartbeat (a command is repeated until acknowledged; it is run once);
- deregisters on SIGINT/SIGTERM (and at --max-seconds).

Exit codes: 0 after a clean shutdown, 1 when the registry stopped it (a newer deployment of
its name exists), 2 on bad settings or a refused registration.
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

JITTER = 0.2  # each wait is the interval shortened by up to 20%
BACKOFF_INITIAL = 1.0  # seconds, doubled per consecutive failure...
BACKOFF_MAX = 60.0  # ... up to this
DEFAULT_INTERVAL = 30.0  # when the registry does not say
REQUEST_TIMEOUT = 5.0
WORK_TICK = 0.5  # the design document's main-loop sleep


def say(line):
    print(line, flush=True)


class Unavailable(Exception):
    """The registry could not be reached, timed out, or answered 429/5xx: retry later."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The registry answered a 4xx: the request itself is wrong, or the worker must stop."""

    def __init__(self, status, body):
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        super().__init__(f"{status} {self.body.get('error', '')}: {self.body.get('message', body)}")


class Registry:
    def __init__(self, base, token=None):
        base = base.rstrip("/")
        if base.endswith("/api"):
            base = base[: -len("/api")]
        self.base = base
        self.token = token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")[:200]
            if e.code in (408, 429) or e.code >= 500:
                retry_after = None
                try:
                    retry_after = float(e.headers.get("Retry-After", ""))
                except (TypeError, ValueError):
                    pass
                raise Unavailable(f"{e.code}: {parsed}", retry_after) from None
            raise Refused(e.code, parsed) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            # Connection refused or reset, DNS, timeouts, a garbled answer.
            raise Unavailable(str(getattr(e, "reason", e))) from None

    def register(self, registration):
        return self.call("POST", "/api/workers/register", registration)

    def heartbeat(self, name, serial, acked):
        body = {"worker_name": name, "serial_number": serial}
        if acked:
            body["acked_commands"] = acked
        return self.call("POST", "/api/workers/heartbeat", body)

    def deregister(self, name, serial):
        path = "/api/workers/" + urllib.parse.quote(name, safe="")
        path += "?" + urllib.parse.urlencode({"serial_number": serial})
        return self.call("DELETE", path)


def jittered(interval):
    """Never later than the registry asked, never earlier than (1 - JITTER) of it."""
    return interval * (1.0 - JITTER * random.random())


def backoff(failures, retry_after=None):
    full = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** min(failures - 1, 30))
    wait = full * (0.5 + 0.5 * random.random())
    if retry_after:
        wait = max(wait, min(retry_after, BACKOFF_MAX))
    return wait


def interval_of(answer, current):
    value = answer.get("heartbeat_interval_secs") if isinstance(answer, dict) else None
    if isinstance(value, (int, float)) and 0 < value < float("inf"):
        return float(value)
    return current


class WorkLoop:
    """The worker's own work, in a thread that a restart replaces."""

    def __init__(self):
        self.generation = 0
        self.stop_event = None
        self.thread = None

    def start(self):
        self.generation += 1
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(self.generation, self.stop_event), daemon=True
        )
        self.thread.start()
        say(f"▶ Work loop started (generation {self.generation})")

    def restart(self):
        self.stop()
        self.start()

    def stop(self):
        if self.thread is not None:
            self.stop_event.set()
            self.thread.join(timeout=5)
            self.thread = None

    @staticmethod
    def _run(generation, stop_event):
        processed = 0
        while not stop_event.wait(WORK_TICK):
            # ... process messages ...
            processed += 1


class Worker:
    def __init__(self, registry, name, user_id, port):
        self.registry = registry
        self.name = name
        self.registration = {
            "name": name,
            "worker_type": "truemark",
            "api_url": f"http://localhost:{port}",
            "user_id": user_id,
            "metadata": {"worker_port": port, "client": "examples/python/worker.py"},
        }
        self.serial = None
        self.interval = DEFAULT_INTERVAL
        self.handed = set()  # commands run, not yet known acknowledged
        self.to_ack = []
        self.stopping = threading.Event()
        self.work = WorkLoop()

    def register(self, again=False):
        answer = self.registry.register(self.registration)
        self.serial = answer["serial_number"]
        self.interval = interval_of(answer, self.interval)
        # A new deployment: the previous one's commands were cancelled with it.
        self.handed.clear()
        self.to_ack.clear()
        if again:
            say(f"✓ Registered again: {answer['model_number']} - {self.serial} "
                "(the registry had lost this worker)")
        else:
            say(f"✓ Registered: {answer['model_number']} - {self.serial}")
        for warning in answer.get("warnings", []):
            say(f"⚠ {warning}")

    def take_commands(self, commands):
        for command in commands or []:
            ident = command.get("id")
            if not isinstance(ident, int) or ident in self.handed:
                continue
            self.handed.add(ident)
            if command.get("command") == "restart":
                say(f"↻ Restart requested by the registry (command {ident}, "
                    f"{command.get('source', '')}): {command.get('reason', '')}")
                self.work.restart()
            else:
                say(f"? Ignoring unknown command {command.get('command')!r}")
            self.to_ack.append(ident)

    def beat(self):
        acked = list(self.to_ack)
        answer = self.registry.heartbeat(self.name, self.serial, acked)
        # Acknowledged: the registry will not send these again.
        self.to_ack = [i for i in self.to_ack if i not in acked]
        self.handed.difference_update(acked)
        self.interval = interval_of(answer, self.interval)
        self.take_commands(answer.get("commands"))

    def run(self, deadline=None, once=False):
        """Returns the exit code."""
        failures = 0
        wait = 0.0
        registered = False
        need_register = True
        while True:
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            if self.stopping.wait(wait) or (deadline is not None and time.monotonic() >= deadline):
                break
            try:
                if need_register:
                    self.register(again=registered)
                    need_register = False
                    if not registered:
                        registered = True
                        self.work.start()
                    wait = 0.0 if once else jittered(self.interval)
                    failures = 0
                    continue
                self.beat()
                failures = 0
                wait = jittered(self.interval)
                if once:
                    break
            except Unavailable as e:
                failures += 1
                wait = backoff(failures, e.retry_after)
                say(f"⚠ Registry unavailable ({e}); retrying in {wait:.1f}s")
            except Refused as e:
                code = e.body.get("error")
                if e.status in (404, 410) and not need_register:
                    # Lost by the registry (404) or removed while still running (410).
                    why = "does not know" if e.status == 404 else "has deregistered"
                    say(f"⚠ The registry {why} {self.name}; registering again")
                    need_register = True
                    wait = 0.0
                elif e.status == 409 and code == "serial_mismatch":
                    say(f"✗ A newer deployment of {self.name} exists "
                        f"({e.body.get('current_serial_number')}); exiting")
                    self.work.stop()
                    return 1
                elif need_register:
                    say(f"✗ Registration refused: {e}")
                    self.work.stop()
                    return 2
                else:
                    # A refused heartbeat is not fatal: keep trying, slowly.
                    failures += 1
                    wait = backoff(failures)
                    say(f"⚠ Heartbeat refused ({e}); retrying in {wait:.1f}s")
        self.work.stop()
        if self.serial is None or need_register:
            return 0
        say("Shutting down")
        if self.to_ack:
            # Commands run since the last heartbeat are recorded as taken, not cancelled
            # with the deployment.
            try:
                self.registry.heartbeat(self.name, self.serial, list(self.to_ack))
            except (Unavailable, Refused):
                pass
        for attempt in range(3):
            try:
                self.registry.deregister(self.name, self.serial)
                say(f"✓ Deregistered {self.name} ({self.serial})")
                return 0
            except Unavailable as e:
                if attempt == 2:
                    say(f"⚠ Deregistration failed: {e}")
                    return 1
                time.sleep(0.2)
            except Refused as e:
                # Lost, already deregistered, or replaced: nothing of ours to remove.
                say(f"⚠ Not deregistered: {e}")
                return 0
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", default=os.environ.get("CALI_X_ONE_API") or "http://localhost:8003",
                        help="registry URL (default: $CALI_X_ONE_API or http://localhost:8003)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="deregister and exit after this many seconds")
    parser.add_argument("--once", action="store_true",
                        help="register, send one heartbeat, deregister and exit")
    args = parser.parse_args()

    user_id = os.environ.get("TARGET_USER_ID")
    if not user_id:
        print("TARGET_USER_ID is required (the user this worker serves), e.g. user_123",
              file=sys.stderr)
        return 2
    worker_name = os.environ.get("WORKER_NAME") or "Josephine"
    port = os.environ.get("WORKER_PORT") or "8080"
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"WORKER_PORT must be a port number, got {port!r}", file=sys.stderr)
        return 2
    if args.max_seconds is not None and args.max_seconds <= 0:
        print("--max-seconds must be positive", file=sys.stderr)
        return 2

    worker = Worker(Registry(args.registry, os.environ.get("DALS_TOKEN")),
                    f"{worker_name}-{user_id}", user_id, port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stopping.set())
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    return worker.run(deadline=deadline, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
