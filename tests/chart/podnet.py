"""The pods' network for tests/chart/pods.py: a network namespace, threads that work in
it, HTTP probes, SMTP clients, the SMTP sink and a TCP forwarder to it.

Sockets belong to the network namespace of the thread that creates them, so everything
that talks to a pod runs in a thread that entered the test's namespace (setns(2) changes
only the calling thread); the main thread stays in the host's namespace. With no
namespace (the fallback, pods on 127.0.0.x) the same code runs in the host's.
"""

import concurrent.futures
import ctypes
import os
import smtplib
import socket
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Fail(Exception):
    """An assertion of the test failed (or it could not set up): the message says what."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, timeout=120, **kw):
    """Runs a command with a bounded time; its output is captured as text."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise Fail(f"{' '.join(map(str, cmd))}: no end after {timeout} s") from e
    if check and p.returncode != 0:
        raise Fail(
            f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
        )
    return p


def wait_until(what, timeout, fn, interval=0.25):
    """Calls fn until it returns something true, for at most timeout seconds. A Fail
    raised by fn ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Netns:
    """A named network namespace (/run/netns/NAME), or none (host networking)."""

    def __init__(self, name):
        self.name = name
        self.path = f"/run/netns/{name}" if name else None

    def create(self):
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def delete(self):
        if self.name and os.path.exists(self.path):
            run(["ip", "netns", "del", self.name], check=False)

    def prefix(self):
        """The command prefix that runs a program in the namespace. `ip netns exec` would
        remount /sys, which breaks runc (so nsenter --net is used instead)."""
        return ["nsenter", f"--net={self.path}"] if self.path else []

    def enter(self):
        """Moves the calling thread into the namespace."""
        if not self.path:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {self.path}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def thread(self, target, *args, name=None):
        """A daemon thread that runs target(*args) in the namespace."""

        def body():
            self.enter()
            target(*args)

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    def pool(self, workers):
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, initializer=self.enter, thread_name_prefix="netns"
        )


def http_get(host, port, path, timeout, headers=None):
    """One HTTP/1.1 GET; the status code, or None when there was no answer in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\n"
                f"{extra}Connection: close\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    except OSError:
        return None


def tcp_open(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def send_mail(host, port, test_id, timeout=30):
    """Sends one message carrying the header X-Pods-Test-Id; the server's queue id when it
    answered 250 after the data, else None and the error."""
    body = (
        f"From: <load@client.test>\r\nTo: <rcpt@dest.test>\r\nSubject: pods test {test_id}\r\n"
        f"Message-ID: <{test_id}@client.test>\r\nX-Pods-Test-Id: {test_id}\r\n\r\n"
        f"message {test_id}\r\n"
    )
    try:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=timeout) as s:
            s.ehlo()
            code, resp = s.mail("load@client.test")
            if code != 250:
                return None, f"MAIL {code} {resp.decode(errors='replace')}"
            code, resp = s.rcpt("rcpt@dest.test")
            if code != 250:
                return None, f"RCPT {code} {resp.decode(errors='replace')}"
            code, resp = s.data(body.encode())
            text = resp.decode(errors="replace")
            if code != 250:
                return None, f"DATA {code} {text}"
            return (text.rsplit(" ", 1)[-1] if "queued as" in text else text), None
    except (OSError, smtplib.SMTPException) as e:
        return None, f"{type(e).__name__}: {e}"


class Forwarder:
    """Accepts TCP connections on listen (in the namespace of the thread that starts it)
    and pipes each to target. baton-sink listens only on loopback; the pods reach it
    through this, on an address of the test's namespace."""

    def __init__(self, netns, listen, target):
        self.netns, self.listen, self.target = netns, listen, target
        self.sock = None
        self.connections = 0
        self.ready = threading.Event()

    def start(self):
        self.netns.thread(self._serve, name="forwarder")
        if not self.ready.wait(10) or self.sock is None:
            raise Fail(f"the sink forwarder could not listen on {self.listen}")

    def _serve(self):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self.listen)
            s.listen(128)
            self.sock = s
        finally:
            self.ready.set()
        while True:
            try:
                client, _ = s.accept()
            except OSError:
                return
            self.connections += 1
            self.netns.thread(self._pipe_both, client, name="forward")

    def _pipe_both(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        t = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        t.start()
        _pipe(client, upstream)
        t.join(600)
        client.close()
        upstream.close()

    def stop(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


def _pipe(src, dst):
    """Copies src to dst until src ends, then ends dst's sending side."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Sink:
    """baton-sink writing every message to a directory (started in the namespace), and
    the count of the test messages in it by X-Pods-Test-Id."""

    def __init__(self, binary, netns, listen, directory, log_path):
        self.binary, self.netns, self.listen = binary, netns, listen
        self.dir, self.log_path = directory, log_path
        self.proc = None
        self.seen = {}  # test id -> copies
        self.other = 0
        self._scanned = set()
        self._lock = threading.Lock()

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        ready = os.path.join(os.path.dirname(self.dir), "sink.ready")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.netns.prefix()
            + [self.binary, "--listen", self.listen, "--dir", self.dir, "--ready-file", ready,
               "--hostname", "sink.test"],
            stdout=logf, stderr=logf, start_new_session=True,
        )
        wait_until("baton-sink to listen", 15, lambda: os.path.exists(ready) or self._died())

    def _died(self):
        if self.proc.poll() is not None:
            raise Fail(f"baton-sink exited {self.proc.returncode}; see {self.log_path}")
        return False

    def scan(self):
        """Reads the messages written since the last scan; returns the id → copies map."""
        with self._lock:
            for e in os.scandir(self.dir):
                if not e.name.endswith(".eml") or e.name in self._scanned:
                    continue
                self._scanned.add(e.name)
                test_id = None
                with open(e.path, "rb") as f:
                    for line in f:
                        if line in (b"\r\n", b"\n"):
                            break
                        if line.lower().startswith(b"x-pods-test-id:"):
                            test_id = line.split(b":", 1)[1].strip().decode()
                            break
                if test_id is None:
                    self.other += 1
                else:
                    self.seen[test_id] = self.seen.get(test_id, 0) + 1
            return dict(self.seen)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
