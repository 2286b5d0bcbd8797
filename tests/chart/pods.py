#!/usr/bin/env python3
"""Runs the Helm chart's StatefulSet pods for real, without Kubernetes: podman plays the
container runtime, this script the API server, the StatefulSet controller, the kubelet
(probes, restarts, /etc/hosts) and the cluster DNS (see cluster/README.md's
pods-test section and the README's "Install on Kubernetes").

    python3 tests/chart/pods.py            (as root; from the repository root)

It renders helm/baton with `helm template` and test values (image localhost/baton:dev
from cluster/build-image.sh, pullPolicy Never, the smarthost an SMTP sink in the pod
network), then in a network namespace of its own (no pod traffic leaves it):

 1. form: 3 pods start at once (podManagementPolicy Parallel), form ONE cluster and
    become Ready (membership and leader seen alike from every pod via batonctl);
 2. deliver: a message sent with swaks to a pod's SMTP port reaches the sink;
 3. failover: while 200 messages flow, the leader's pod is deleted (SIGTERM, its
    terminationGracePeriodSeconds) and re-created on its volume; the cluster heals and
    every accepted message (250 with a queue id) reaches the sink;
 4. rejoin-empty: pod 0 re-created with an EMPTY volume joins the existing cluster
    (never a second one) and gets the data back;
 5. scale: `helm upgrade --set replicas=5` (ordinals 3, 4 join) then back to 3 (the
    pre-upgrade hook Job `batonctl node scale-down` first, then pods 4 and 3 go), mail
    flowing throughout, nothing lost.

Each step prints `TIMING <name> <seconds>`; those with mail `LOST <n>`. Every wait is
bounded; any failed assertion exits 1 with what failed. Where podman cannot run at all,
the same scenarios run on the fallback runtime (plain processes on 127.0.0.x, see
runtimes.Processes), announced loudly. Everything this creates (network namespace,
containers, volumes, storage, processes, files) is removed at the end, also on failure.

Environment: HELM (helm binary), BATON_SINK (baton-sink binary), BIN_DIR (the static
batond/batonctl, for the fallback), BATON_CHART (another chart directory).
"""

import argparse
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from podnet import Fail, Forwarder, Netns, Sink, log, run, send_mail, wait_until  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = "baton"
NAMESPACE = "mail"
SINK_IP = "10.96.0.25"  # a "Service IP" in the test's namespace, forwarded to baton-sink
SINK_PORT = 2526


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chart", default=os.environ.get("BATON_CHART", os.path.join(ROOT, "helm", "baton")))
    ap.add_argument("--image", default="localhost/baton:dev")
    ap.add_argument("--bin-dir", default=os.environ.get(
        "BIN_DIR", os.path.join(ROOT, "target", "musl", "x86_64-unknown-linux-musl", "release")))
    ap.add_argument("--fallback", action="store_true", help="use the fallback runtime even if podman works")
    ap.add_argument("--scenarios", default="1,2,3,4,5", help="which to run (1 always runs: the others need its cluster)")
    ap.add_argument("--messages", type=int, default=200, help="messages during the leader's failover")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("pods.py needs root (network namespaces, podman's rootful networking)", file=sys.stderr)
        return 2
    test = PodsTest(args)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        test.run()
        return 0 if test.ok() else 1
    except Fail as e:
        test.failed(str(e))
        return 1
    except KeyboardInterrupt:
        test.failed("interrupted")
        return 1
    except Exception:  # noqa: BLE001 (a bug in the test is a failure too, with its trace)
        test.failed(traceback.format_exc())
        return 1
    finally:
        test.summary()
        test.cleanup()


def interrupted(*_):
    raise KeyboardInterrupt


def sweep_stale():
    """Removes what an earlier run killed before its cleanup (SIGKILL) left behind: its
    containers (conmon keeps them running), volumes, network, mounts, network namespace,
    sink and fallback processes, and files. Runs kept with --keep are left alone."""
    from runtimes import unmount_under

    for d in glob.glob("/var/tmp/baton-pods.*"):
        try:
            with open(os.path.join(d, "pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            continue
        if os.path.exists(f"/proc/{pid}") or os.path.exists(os.path.join(d, "kept")):
            continue
        log(f"removing what an earlier run (pid {pid}) left behind: {d}")
        conf = os.path.join(d, "podman", "containers.conf")
        netns = Netns(f"baton-k8s-{pid}")
        if os.path.exists(conf):
            env = dict(os.environ, CONTAINERS_CONF=conf,
                       CONTAINERS_STORAGE_CONF=os.path.join(d, "podman", "storage.conf"))
            pre = netns.prefix() if os.path.exists(netns.path) else []
            for args in (["rm", "-a", "-f", "-t", "0"], ["volume", "rm", "-a", "-f"], ["network", "prune", "-f"],
                         ["rmi", "-a", "-f"]):
                run(pre + ["podman", *args], check=False, env=env)
        # The sink, fallback pods and anything else started with a path in d.
        for proc in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                with open(proc, "rb") as f:
                    cmdline = f.read()
                if d.encode() in cmdline:
                    os.kill(int(proc.split("/")[2]), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        netns.delete()
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)


class PodsTest:
    def __init__(self, args):
        self.args = args
        sweep_stale()
        self.work = tempfile.mkdtemp(prefix="baton-pods.", dir="/var/tmp")
        os.chmod(self.work, 0o755)
        with open(os.path.join(self.work, "pid"), "w") as f:
            f.write(str(os.getpid()))
        self.netns = None
        self.runtime = None
        self.sts = None
        self.sink = None
        self.forwarder = None
        self.results = []  # (scenario, "ok" | "FAIL: ..." | "skipped")
        self.timings = []
        self.lost = []
        self.mode = None
        self.failure = None

    # ------------------------------------------------------------ setup

    def helm(self):
        for cand in (os.environ.get("HELM"), "/var/cache/baton-ci/helm", "/var/cache/baton-ci/helm/helm",
                     shutil.which("helm")):
            if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
        tools = os.path.join(ROOT, "tests", "chart", "install_tools.sh")
        if os.path.exists(tools):
            return run(["bash", tools], timeout=600).stdout.strip().splitlines()[-1]
        raise Fail("no helm binary: set HELM, or run tests/chart/install_tools.sh")

    def sink_binary(self):
        cand = os.environ.get("BATON_SINK")
        if cand:
            return cand
        for d in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(ROOT, "target")):
            for profile in ("debug", "release"):
                p = d and os.path.join(d, profile, "baton-sink")
                if p and os.access(p, os.X_OK):
                    return p
        raise Fail("baton-sink not found: set BATON_SINK or `cargo build -p baton-load --bin baton-sink`")

    def podman_usable(self):
        """Sets up the podman runtime; False (after a loud banner) when podman cannot run
        containers here. A missing or broken image fails the test instead: falling back
        would hide it."""
        from runtimes import Podman, Unusable

        try:
            if shutil.which("podman") is None:
                raise Unusable("no podman binary")
            self.netns = Netns(f"baton-k8s-{os.getpid()}")
            self.netns.create()
            self.runtime = Podman(self.work, self.netns, self.args.image, self.args.bin_dir)
            self.runtime.setup()
            return True
        except Unusable as e:
            print("\n" + "!" * 78, flush=True)
            print(f"!!! PODMAN CANNOT RUN HERE: {e}", flush=True)
            print("!!! FALLING BACK to plain processes on 127.0.0.x (no containers, no image,", flush=True)
            print("!!! no readOnlyRootFilesystem, no limits): the fallback.", flush=True)
            print("!" * 78 + "\n", flush=True)
            if self.runtime:
                self.runtime.teardown()
                self.runtime = None
            self.netns.delete()
            self.netns = None
            return False

    def setup(self):
        if not self.args.fallback and self.podman_usable():
            self.mode = "podman"
            smarthost = f"{SINK_IP}:25"
            relay = ["10.244.0.0/16", "127.0.0.0/8"]
            self.sink = Sink(self.sink_binary(), self.netns, f"127.0.0.1:{SINK_PORT}",
                             os.path.join(self.work, "sink", "mail"), os.path.join(self.work, "logs", "sink.log"))
            self.sink.start()
            run(["ip", "-n", self.netns.name, "addr", "add", f"{SINK_IP}/32", "dev", "lo"])
            self.forwarder = Forwarder(self.netns, (SINK_IP, 25), ("127.0.0.1", SINK_PORT))
            self.forwarder.start()
        else:
            if not self.args.fallback:
                log("fallback runtime (podman could not run)")
            from runtimes import Processes

            self.mode = "fallback"
            self.netns = Netns(None)
            self.runtime = Processes(self.work, self.args.bin_dir)
            self.runtime.setup()
            smarthost = f"127.0.0.2:{SINK_PORT}"
            relay = ["127.0.0.0/8"]
            os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
            self.sink = Sink(self.sink_binary(), self.netns, smarthost,
                             os.path.join(self.work, "sink", "mail"), os.path.join(self.work, "logs", "sink.log"))
            self.sink.start()
        values = {
            "image": {"repository": self.args.image.rsplit(":", 1)[0], "tag": self.args.image.rsplit(":", 1)[1],
                      "pullPolicy": "Never"},
            "smtp": {"relayNetworks": relay},
            "config": {"delivery": {"smarthost": smarthost, "retryIntervals": ["2s", "5s", "10s"]}},
        }
        self.values = os.path.join(self.work, "values-test.yaml")
        with open(self.values, "w") as f:
            json.dump(values, f, indent=2)  # JSON is YAML
        self.helm_bin = self.helm()
        log(f"helm: {self.helm_bin}; chart {self.args.chart}; values {json.dumps(values)}")

    def render(self, replicas):
        from podctl import render

        return render(self.helm_bin, self.args.chart, RELEASE, NAMESPACE, [self.values], [f"replicas={replicas}"])

    # ------------------------------------------------------------ helpers

    def timing(self, name, seconds):
        self.timings.append((name, seconds))
        print(f"TIMING {name} {seconds:.1f}", flush=True)

    def status(self, i):
        pod = self.sts.pods[i]
        p = self.runtime.exec(pod.name, ["/usr/local/bin/batonctl", "--json", "status"], {}, timeout=20, check=False)
        if p.returncode != 0:
            raise Fail(f"batonctl status in {pod.name}: {p.stderr.strip()[-300:]}")
        return json.loads(p.stdout)

    def one_cluster(self, ordinals, timeout=60):
        """Waits until every pod in ordinals reports the same leader and term and the same
        voters, one per ordinal (ids = ordinal + 1); returns the leader's ordinal."""
        want = {i + 1 for i in ordinals}
        last = {}

        def check():
            views = {}
            for i in ordinals:
                try:
                    views[i] = self.status(i)
                except Fail as e:
                    last["err"] = str(e)
                    return None
            last["views"] = views
            leaders = {v.get("leader_id") for v in views.values()}
            terms = {v.get("term") for v in views.values()}
            if len(leaders) != 1 or len(terms) != 1 or not next(iter(leaders)):
                return None
            for i, v in views.items():
                if v.get("node_id") != i + 1:
                    raise Fail(f"{self.sts.pod_name(i)} is node {v.get('node_id')}, not {i + 1}")
                members = v.get("members") or []
                if {m.get("id") for m in members} != want:
                    return None
                if any(m.get("role") not in ("voter", "Voter") for m in members):
                    return None
                if sum(1 for m in members if m.get("leader")) != 1:
                    return None
            return leaders.pop()

        try:
            leader = wait_until(f"one cluster of {sorted(want)} seen alike from every pod", timeout, check,
                                interval=1) - 1
        except Fail:
            summary = {i: {k: v.get(k) for k in ("node_id", "role", "leader_id", "term", "commit_index")}
                       | {"members": [(m.get("id"), m.get("role"), m.get("leader")) for m in v.get("members") or []]}
                       for i, v in (last.get("views") or {}).items()}
            raise Fail(f"no single cluster of {sorted(want)}: views {summary} {last.get('err', '')}")
        log(f"one cluster: members {sorted(want)}, leader node {leader + 1} ({self.sts.pod_name(leader)})")
        return leader

    def wait_delivered(self, ids, timeout=180):
        """Waits until every id is in the sink; returns the number lost."""
        ids = set(ids)
        try:
            wait_until(f"{len(ids)} accepted messages in the sink", timeout,
                       lambda: ids <= set(self.sink.scan()), interval=1)
        except Fail:
            pass
        missing = ids - set(self.sink.scan())
        return len(missing), sorted(missing)[:20]

    def check_restarts(self):
        bad = self.sts.unexpected_restarts()
        if bad:
            tails = "\n".join(f"--- {p.name}\n{self.runtime.log_tail(p)}" for p in self.sts.pods.values())
            raise Fail(f"containers restarted by the kubelet (exit or failed probe): {bad}\n{tails}")

    # ------------------------------------------------------------ scenarios

    def run(self):
        self.setup()
        from podctl import StatefulSet, Store

        # helm template cannot `lookup` the Secrets the chart keeps across upgrades (admin
        # token, peer CA and certificates), so they come from one render at the largest
        # replica count and stay, as an upgrade would leave them.
        store = Store()
        store.apply(self.render(5))
        m3 = self.render(3)
        store.apply(m3, secrets=False)
        self.sts = StatefulSet(self.runtime, store, m3, NAMESPACE, self.work, "cluster.local")
        scenarios = [("form", self.s1_form), ("deliver", self.s2_deliver), ("failover", self.s3_failover),
                     ("rejoin-empty", self.s4_rejoin_empty), ("scale", self.s5_scale)]
        wanted = {int(s) for s in self.args.scenarios.split(",")} | {1}
        for n, (name, fn) in enumerate(scenarios, 1):
            if n not in wanted:
                self.results.append((f"{n} {name}", "skipped"))
                continue
            log(f"==== scenario {n}: {name}")
            try:
                fn()
                self.check_restarts()
            except Fail as e:
                self.results.append((f"{n} {name}", f"FAIL: {str(e).splitlines()[0][:200]}"))
                for p in list(self.sts.pods.values()):
                    print(f"--- last log lines of {p.name}:\n{self.runtime.log_tail(p, 15)}", flush=True)
                raise
            self.results.append((f"{n} {name}", "ok"))

    def s1_form(self):
        if self.sts.replicas != 3:
            raise Fail(f"the test values render {self.sts.replicas} replicas, not 3")
        t0 = time.monotonic()
        self.sts.scale(self.sts.replicas)
        self.sts.wait_ready([0, 1, 2], self.sts.ready_budget())
        self.timing("form_ready", time.monotonic() - t0)
        self.one_cluster([0, 1, 2])
        self.timing("form_one_cluster", time.monotonic() - t0)

    def s2_deliver(self):
        pod = self.sts.pods[0]
        t0 = time.monotonic()
        p = run(self.netns.prefix() + [
            "swaks", "--server", f"{pod.ip}:2525", "--helo", "client.test", "--from", "app@client.test",
            "--to", "rcpt@dest.test", "--header", "X-Pods-Test-Id: s2-swaks", "--h-Subject", "pods test",
            "--timeout", "30"], check=False, timeout=60)
        if p.returncode != 0 or "queued as" not in p.stdout:
            raise Fail(f"swaks to {pod.name}: exit {p.returncode}\n{p.stdout[-1500:]}{p.stderr[-500:]}")
        lost, _ = self.wait_delivered(["s2-swaks"], timeout=60)
        if lost:
            raise Fail("the message swaks sent never reached the sink")
        self.timing("deliver_one", time.monotonic() - t0)

    def s3_failover(self):
        leader = self.one_cluster([0, 1, 2])
        flow = MailFlow(self, "s3", count=self.args.messages, seconds=4)
        flow.start()
        # The leader goes while mail is being accepted, not before the first message.
        wait_until("mail accepted before the leader's pod stops", 30, lambda: len(flow.accepted) >= 10)
        t0 = time.monotonic()
        self.sts.delete(leader)
        self.timing("failover_leader_stopped", time.monotonic() - t0)
        t1 = time.monotonic()
        self.sts.create(leader)
        self.sts.wait_ready([0, 1, 2], self.sts.ready_budget())
        self.timing("failover_pod_ready_again", time.monotonic() - t1)
        self.one_cluster([0, 1, 2])
        self.timing("failover_healed", time.monotonic() - t0)
        flow.wait(120)
        t2 = time.monotonic()
        lost, missing = self.wait_delivered(flow.accepted)
        self.timing("failover_all_delivered", time.monotonic() - t2)
        self.mail_report("failover", flow, lost, missing)

    def s4_rejoin_empty(self):
        leader = self.one_cluster([0, 1, 2])
        before = self.status(leader)
        t0 = time.monotonic()
        self.sts.delete(0)
        self.sts.delete_claims(0)
        self.sts.create(0)
        self.sts.wait_ready([0], self.sts.ready_budget())
        self.timing("rejoin_empty_ready", time.monotonic() - t0)
        leader = self.one_cluster([0, 1, 2])
        if leader == 0:
            log("pod 0 became the leader after rejoining (allowed: it is a member of the one cluster)")
        after_term = self.status(leader)["term"]
        if after_term < before["term"]:
            raise Fail(f"the term went back from {before['term']} to {after_term}")
        target = before["commit_index"]
        wait_until(f"pod 0 to apply the log up to {target}", 60,
                   lambda: self.status(0).get("applied_index", 0) >= target, interval=1)
        claim = self.sts.claim(self.sts.claim_templates[0], 0)
        size = self.runtime.volume_bytes(claim)
        if size == 0:
            raise Fail(f"pod 0's new volume {claim} is still empty")
        log(f"pod 0 applied the log to {self.status(0).get('applied_index')} (the leader's commit before: {target}); "
            f"its volume holds {size} bytes")
        self.timing("rejoin_empty_caught_up", time.monotonic() - t0)

    def s5_scale(self):
        self.one_cluster([0, 1, 2])
        flow = MailFlow(self, "s5", rate=10)
        flow.start()
        t0 = time.monotonic()
        self.sts.upgrade(self.render(5), run_hooks=True)
        self.sts.wait_ready([3, 4], self.sts.ready_budget())
        self.one_cluster([0, 1, 2, 3, 4], timeout=120)
        self.timing("scale_up_3_to_5", time.monotonic() - t0)
        t1 = time.monotonic()
        self.sts.upgrade(self.render(3), run_hooks=True)
        self.one_cluster([0, 1, 2], timeout=120)
        self.timing("scale_down_5_to_3", time.monotonic() - t1)
        time.sleep(2)
        flow.stop()
        flow.wait(60)
        t2 = time.monotonic()
        lost, missing = self.wait_delivered(flow.accepted)
        self.timing("scale_all_delivered", time.monotonic() - t2)
        self.mail_report("scale", flow, lost, missing)

    def mail_report(self, name, flow, lost, missing):
        seen = self.sink.scan()
        dups = sum(1 for i in flow.accepted if seen.get(i, 0) > 1)
        print(f"LOST {lost}", flush=True)
        self.lost.append((name, lost))
        log(f"{name}: {len(flow.accepted) + len(flow.refused)} messages in {flow.sent} SMTP attempts, "
            f"{len(flow.accepted)} accepted, {len(flow.refused)} never accepted (5 tries), "
            f"{len(flow.accepted) - lost} of the accepted delivered, {dups} delivered twice")
        if flow.refused:
            log(f"{name}: e.g. not accepted: {list(flow.refused.items())[:3]}")
        if lost:
            where = {i: flow.accepted[i] for i in missing}
            raise Fail(f"{lost} accepted messages never reached the sink, e.g. {where}")
        if not flow.accepted:
            raise Fail(f"{name}: no message was accepted")

    # ------------------------------------------------------------ the end

    def failed(self, msg):
        self.failure = msg
        print(f"\nFAILED: {msg}", file=sys.stderr, flush=True)

    def ok(self):
        return self.failure is None and all(r == "ok" or r == "skipped" for _, r in self.results)

    def summary(self):
        print("\n==== summary" + (f" (runtime: {self.mode})" if self.mode else ""), flush=True)
        for name, r in self.results:
            print(f"  scenario {name}: {r}", flush=True)
        for name, s in self.timings:
            print(f"  TIMING {name} {s:.1f}", flush=True)
        for name, n in self.lost:
            print(f"  LOST {name} {n}", flush=True)
        print(f"  logs: {self.work}/logs" + ("" if self.args.keep else " (removed)"), flush=True)
        print("PASS" if self.ok() else "FAIL", flush=True)

    def cleanup(self):
        try:
            if self.sts:
                for i in list(self.sts.pods):
                    p = self.sts.pods[i]
                    if p.kubelet:
                        p.kubelet.stopping.set()
                    try:
                        self.runtime.stop(p, 0) if self.mode == "fallback" else None
                    except Exception:  # noqa: BLE001 (cleanup goes on)
                        pass
            if self.forwarder:
                self.forwarder.stop()
            if self.sink:
                self.sink.stop()
            if self.runtime:
                self.runtime.teardown()
        finally:
            if self.netns:
                self.netns.delete()
            if self.args.keep:
                open(os.path.join(self.work, "kept"), "w").close()
                log(f"kept {self.work}")
            else:
                from runtimes import unmount_under

                unmount_under(self.work)
                shutil.rmtree(self.work, ignore_errors=True)


class MailFlow:
    """Messages sent like clients behind the SMTP Service: each to a Ready pod not being
    deleted (round robin), tried on up to 5 pods. `count` over `seconds`, or `rate` per
    second until stop()."""

    def __init__(self, test, prefix, count=None, seconds=None, rate=None):
        self.test, self.prefix = test, prefix
        self.count, self.seconds, self.rate = count, seconds, rate
        self.accepted = {}  # id -> (pod, queue id)
        self.refused = {}  # id -> last error
        self.sent = 0
        self._stop = threading.Event()
        self._rr = 0
        self._lock = threading.Lock()
        self.pool = test.netns.pool(8)
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._schedule, daemon=True)
        self.thread.start()

    def _schedule(self):
        interval = self.seconds / self.count if self.count else 1 / self.rate
        futures = []
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set() and (self.count is None or n < self.count):
            delay = t0 + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._send, f"{self.prefix}-{n:05d}"))
            n += 1
        for f in futures:
            f.result()

    def _send(self, test_id):
        err = "no Ready pod"
        for _ in range(5):
            pods = self.test.sts.ready_pods()
            if not pods:
                time.sleep(0.5)
                continue
            with self._lock:
                self._rr += 1
                pod = pods[self._rr % len(pods)]
                self.sent += 1
            qid, err = send_mail(pod.ip, 2525, test_id)
            if qid:
                with self._lock:
                    self.accepted[test_id] = (pod.name, qid)
                    self.refused.pop(test_id, None)
                return
            time.sleep(0.2)
        with self._lock:
            self.refused[test_id] = err

    def stop(self):
        self._stop.set()

    def wait(self, timeout):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Fail(f"the mail flow {self.prefix} did not finish in {timeout} s")
        self.pool.shutdown(wait=True)


if __name__ == "__main__":
    sys.exit(main())
