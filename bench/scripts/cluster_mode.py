#!/usr/bin/env python3
"""What codex-worker's cluster mode (docs/node-loss.md) costs a session, measured on one host.

Drives `codex-worker` directly over stdin/stdout (no daemon) with the fake child
`codex-mock app-server`, once without and once with `--store sqlite:…`, alternating, and prints
per run: the median and p99 round trip of a thread-scoped request (`thread/read` on a thread
leased here: the cluster layer's per-request check), and the median time from `turn/start` to
`turn/completed` (which in cluster mode waits for the turn's rollout to be published).

    cargo build --release -p codex-worker -p codex-mock
    python3 bench/scripts/cluster_mode.py [target/release] [runs]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
READS, TURNS = 2000, 30


def run(cluster, root):
    shutil.rmtree(root, True)
    os.makedirs(root)
    child = f"{BIN}/codex-mock app-server --first-delta-ms 1 --delta-interval-ms 1 --deltas 3"
    args = [f"{BIN}/codex-worker", "--codex-cmd", child, "--state-dir", root + "/state"]
    if cluster:
        args += ["--store", f"sqlite:{root}/store.sqlite", "--shared-dir", root + "/shared", "--node", "a"]
    env = dict(os.environ, CODEX_BUS_POOL="bench", CODEX_BUS_SLOT="0")
    worker = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        def send(message):
            message = dict(message, jsonrpc="2.0", sessionId="s1", tenant="bench")
            worker.stdin.write((json.dumps(message) + "\n").encode())
            worker.stdin.flush()

        def until(test):
            while True:
                line = worker.stdout.readline()
                if not line:
                    raise SystemExit("codex-worker exited")
                message = json.loads(line)
                if test(message):
                    return message

        send({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "bench", "version": "1"}}})
        until(lambda m: m.get("id") == 1)
        send({"method": "initialized"})
        send({"id": 2, "method": "thread/start", "params": {}})
        thread = until(lambda m: m.get("id") == 2)["result"]["thread"]["id"]
        time.sleep(0.3)  # the new thread's lease is taken in the background
        reads = []
        for n in range(READS):
            start = time.perf_counter()
            send({"id": 10 + n, "method": "thread/read", "params": {"threadId": thread}})
            until(lambda m, n=n: m.get("id") == 10 + n)
            reads.append(time.perf_counter() - start)
        turns = []
        for n in range(TURNS):
            start = time.perf_counter()
            send({"id": 100000 + n, "method": "turn/start",
                  "params": {"threadId": thread, "input": [{"type": "text", "text": "x"}]}})
            until(lambda m: m.get("method") == "turn/completed")
            turns.append(time.perf_counter() - start)
        worker.stdin.close()
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    reads.sort()
    turns.sort()
    return reads[len(reads) // 2] * 1e6, reads[len(reads) * 99 // 100] * 1e6, turns[len(turns) // 2] * 1e3


with tempfile.TemporaryDirectory() as tmp:
    for _ in range(RUNS):
        for cluster in (False, True):
            p50, p99, turn = run(cluster, os.path.join(tmp, "run"))
            mode = "cluster (SQLite)" if cluster else "plain           "
            print(f"{mode}  thread/read p50 {p50:5.0f} us  p99 {p99:5.0f} us   turn p50 {turn:5.1f} ms")
