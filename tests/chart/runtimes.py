"""Container runtimes for tests/chart/podctl.py's pods.

- `Podman`: each pod a container (`podman run`, runc) on a bridge network inside the
  test's network namespace, with a private containers.conf and storage (podman's
  pitfalls and their fixes), one named volume per claim.
- `Processes`: the fallback where podman cannot run: each pod's command as a plain
  process on its own 127.0.0.x address, in `unshare --mount --uts` with its host name and
  the kubelet-style hosts file bind-mounted on /etc/hosts, paths and listen addresses of
  the pod rewritten to the host's.

`podman run` rather than `podman kube play`: kube play (4.3) publishes every
containerPort on the host, mangles exec probes, refuses existing volumes for PVCs and
runs no probes without systemd; every part of the pod spec would have to be edited
before it and emulated after it anyway. With `podman run` each field of the rendered
pod spec maps to one flag (pod_plan → start), and what is not emulated fails loudly.
"""

import json
import re
import os
import resource
import shlex
import shutil
import signal
import subprocess
import time

from podnet import Fail, Netns, log, run

IMAGE_BIN = "/usr/local/bin/"


class Unusable(Fail):
    """podman cannot run containers on this machine (the fallback's cue), as opposed to
    a failure of the test's own setup (a missing or broken image), which fails the test."""


class Podman:
    def __init__(self, work, netns, image, bin_dir, subnet_prefix="10.244.0"):
        self.work, self.netns, self.image, self.bin_dir = work, netns, image, bin_dir
        self.root = os.path.join(work, "podman")
        self.prefix = subnet_prefix
        self.network = f"{netns.name}-pods"
        self.next_ip = 10
        self.conf = os.path.join(self.root, "containers.conf")
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=self.conf,
            CONTAINERS_STORAGE_CONF=os.path.join(self.root, "storage.conf"),
        )
        self.env.pop("CONTAINER_HOST", None)
        self.logs = os.path.join(work, "logs")

    # -- setup and teardown

    def podman(self, *args, check=True, timeout=120):
        return run(self.netns.prefix() + ["podman", *map(str, args)], check=check, timeout=timeout, env=self.env)

    def setup(self):
        """Private config and storage, the pod network, the image copied in. Raises
        Unusable if podman cannot run a trivial container here, Fail if the image is
        missing or does not run."""
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = min(hard, 65536)
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
        r = self.root
        with open(self.conf, "w") as f:
            f.write(f"""# tests/chart/pods.py: podman for this test only (podman's pitfalls).
[containers]
# No CAP_SYS_RESOURCE here: podman's default rlimits would fail with setrlimit EPERM.
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
log_driver = "k8s-file"

[engine]
# crun fails on this machine's hybrid cgroups; no systemd for the cgroup manager,
# events or healthcheck timers.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{r}/events.log"
tmp_dir = "{r}/libpod-tmp"
volume_path = "{r}/volumes"
static_dir = "{r}/libpod"

[network]
network_backend = "netavark"
network_config_dir = "{r}/networks"
""")
        with open(self.env["CONTAINERS_STORAGE_CONF"], "w") as f:
            f.write(f"""[storage]
driver = "overlay"
graphroot = "{r}/storage"
runroot = "{r}/run"
""")
        info = self.podman("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.CgroupManager}}",
                           check=False, timeout=60)
        if info.returncode != 0:
            raise Unusable(f"podman info failed: {info.stderr.strip()[-500:]}")
        log(f"podman: {info.stdout.strip()} (private storage in {r})")
        p = self.podman("network", "create", "--disable-dns", "--subnet", f"{self.prefix}.0/24",
                        "--gateway", f"{self.prefix}.1", self.network, check=False)
        if p.returncode != 0:
            raise Unusable(f"podman network create failed: {p.stderr.strip()[-500:]}")
        # A trivial container that does not depend on the image: the static batonctl in a
        # root file system of its own (podman --rootfs).
        static = os.path.join(self.bin_dir, "batonctl")
        if os.access(static, os.X_OK):
            rootfs = os.path.join(self.root, "trivial-rootfs")
            os.makedirs(rootfs, exist_ok=True)
            shutil.copy(static, os.path.join(rootfs, "batonctl"))
            try:
                code, out = self._run_to_end("pods-trivial", ["--network", self.network, "--rootfs", rootfs,
                                                              "/batonctl", "--version"], 90)
            except Fail as e:
                raise Unusable(f"a trivial container does not start: {e}") from e
            if code != 0:
                raise Unusable(f"a trivial container does not start: exit {code}: {out.strip()[-800:]}")
            log(f"podman: a trivial container ran ({out.strip()})")
            shutil.rmtree(rootfs)
        else:
            log(f"podman: no {static} for a trivial container: the image's first run stands for it")
        self._load_image()
        try:
            code, out = self._run_to_end("pods-image", ["--network", self.network, "--pull", "never", self.image,
                                                        "--version"], 90)
        except Fail as e:
            code, out = -1, str(e)
        if code != 0:
            err = f"{self.image} does not run: exit {code}: {out.strip()[-800:]}"
            raise Fail(err) if os.access(static, os.X_OK) else Unusable(err)
        log(f"podman: {self.image} runs: {out.strip()}")

    def _load_image(self):
        """Copies the image from the machine's default storage (where build-image.sh's
        buildah put it) into this test's storage."""
        archive = os.path.join(self.root, "image.tar")
        default_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
        p = run(["podman", "image", "save", "--format", "oci-archive", "-o", archive, self.image],
                check=False, timeout=180, env=default_env)
        if p.returncode != 0:
            raise Fail(f"image {self.image} not found in the default storage (run cluster/build-image.sh): "
                       f"{p.stderr.strip()[-300:]}")
        out = self.podman("load", "-q", "-i", archive, timeout=180).stdout
        if self.podman("image", "exists", self.image, check=False).returncode != 0:
            loaded = out.strip().rsplit(" ", 1)[-1]
            self.podman("tag", loaded, self.image)
        os.unlink(archive)

    def teardown(self):
        for args in (("rm", "-a", "-f", "-t", "0"), ("volume", "rm", "-a", "-f"),
                     ("network", "rm", "-f", self.network), ("rmi", "-a", "-f")):
            self.podman(*args, check=False, timeout=120)
        unmount_under(self.root)

    # -- volumes and addresses

    def allocate_ip(self):
        """A new address for each pod created (as a CNI gives): a re-created pod's peers
        learn it from the refreshed hosts files, as they would from the cluster DNS."""
        ip = f"{self.prefix}.{self.next_ip}"
        self.next_ip = self.next_ip + 1 if self.next_ip < 250 else 10
        return ip

    def ensure_volume(self, name, fs_group):
        if self.podman("volume", "exists", name, check=False).returncode == 0:
            return
        self.podman("volume", "create", name)
        path = self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip()
        # A fresh volume is root's; the kubelet gives it to fsGroup (setgid, group rw).
        if fs_group is not None:
            os.chown(path, 0, fs_group)
            os.chmod(path, 0o2775)

    def remove_volume(self, name):
        self.podman("volume", "rm", "-f", name, check=False)

    def volume_bytes(self, name):
        path = self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip()
        return tree_bytes(path)

    # -- containers

    def _run_args(self, plan, ip, files, log_path):
        if plan.pull_policy == "Always":
            raise Fail(f"{plan.name}: imagePullPolicy Always needs a registry; the test values set Never")
        a = ["--name", plan.name, "--hostname", plan.hostname, "--network", self.network, "--ip", ip,
             "--dns", "none", "--pull", "never", "--log-driver", "k8s-file", "--log-opt", f"path={log_path}",
             "--stop-timeout", plan.grace, "--label", f"io.kubernetes.pod.name={plan.name}",
             "--label", f"io.kubernetes.pod.namespace={plan.namespace}"]
        for dst, src in files.items():
            a += ["--mount", f"type=bind,src={src},dst={dst},ro=true"]
        if plan.uid is not None:
            a += ["--user", f"{plan.uid}:{plan.gid if plan.gid is not None else plan.uid}"]
        for g in plan.groups:
            a += ["--group-add", g]
        if plan.read_only:
            a += ["--read-only", "--read-only-tmpfs=false"]
        if plan.privileged:
            a += ["--privileged"]
        for c in plan.cap_drop:
            a += ["--cap-drop", c.lower()]
        for c in plan.cap_add:
            a += ["--cap-add", c.lower()]
        if plan.no_new_privs:
            a += ["--security-opt", "no-new-privileges"]
        if plan.memory:
            a += ["--memory", f"{plan.memory}b", "--memory-swap", f"{plan.memory}b"]
        if plan.cpus:
            a += ["--cpus", plan.cpus]
        for k, v in plan.env.items():
            a += ["--env", f"{k}={v}"]
        for kind, src, dst, ro in plan.mounts:
            if kind == "volume":
                # nocopy: the volume keeps the ownership the kubelet gave it (fsGroup), not
                # the image directory's.
                a += ["-v", f"{src}:{dst}:{'ro,' if ro else ''}nocopy"]
            else:
                a += ["--mount", f"type=bind,src={src},dst={dst}" + (",ro=true" if ro else "")]
        if plan.workdir:
            a += ["--workdir", plan.workdir]
        if plan.command is not None:
            a += ["--entrypoint", json.dumps(plan.command)]
        a.append(plan.image)
        a += plan.args or []
        return a

    def start(self, pod, files):
        log_path = os.path.join(self.logs, f"{pod.name}.log")
        with open(log_path, "a") as f:  # one file per pod name, across re-creations
            f.write(f"--- pods.py: creating {pod.name} on {pod.ip}\n")
        self.podman("run", "-d", *self._run_args(pod.plan, pod.ip, files, log_path), timeout=120)
        pod.handle = {"log": log_path}
        self._refresh_pid(pod)

    def _refresh_pid(self, pod):
        pid = int(self.podman("inspect", "--format", "{{.State.Pid}}", pod.name).stdout.strip() or 0)
        pod.handle["pid"] = pid
        pod.handle["start"] = proc_start(pid)

    def running(self, pod):
        h = pod.handle or {}
        return bool(h.get("pid")) and proc_start(h["pid"]) == h.get("start")

    def exit_code(self, pod):
        p = self.podman("inspect", "--format", "{{.State.ExitCode}}", pod.name, check=False)
        return p.stdout.strip()

    def stop(self, pod, grace):
        self.podman("stop", "-t", grace, pod.name, timeout=grace + 60)

    def remove(self, pod):
        self.podman("rm", "-f", "-t", "0", pod.name, timeout=60)

    def restart(self, pod, grace):
        self.podman("restart", "-t", grace, pod.name, timeout=grace + 60)
        self._refresh_pid(pod)

    def start_again(self, pod):
        self.podman("start", pod.name, timeout=60)
        self._refresh_pid(pod)

    def exec(self, name, argv, env, timeout=30, check=True):
        a = ["exec"]
        for k, v in env.items():
            a += ["--env", f"{k}={v}"]
        return self.podman(*a, name, *argv, check=check, timeout=timeout)

    def run_to_end(self, plan, ip, files, timeout):
        """Runs a Job's pod to its end: its exit code (-1: killed at the deadline) and log."""
        log_path = os.path.join(self.logs, f"{plan.name}.log")
        args = self._run_args(plan, ip, files, log_path)
        return self._run_to_end(plan.name, args[2:], timeout)  # args[:2]: --name NAME

    def _run_to_end(self, name, args, timeout):
        """`podman run -d --name name ARGS`, the process watched through /proc until it
        ends: an attached `podman run` or `podman wait` (4.3) returns some 20 s after the
        container exited."""
        self.podman("run", "-d", "--name", name, *args)
        deadline = time.monotonic() + timeout
        try:
            pid = int(self.podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip() or 0)
            start = proc_start(pid)
            while start and proc_start(pid) == start and time.monotonic() < deadline:
                time.sleep(0.1)
            code = -1
            while time.monotonic() < deadline + 10:
                st = self.podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
                if st and st[0] in ("exited", "stopped"):
                    code = int(st[1])
                    break
                time.sleep(0.1)
            p = self.podman("logs", name, check=False)
            return code, p.stdout + p.stderr
        finally:
            self.podman("rm", "-f", "-t", "0", name, check=False)

    def log_tail(self, pod, lines=30):
        path = (pod.handle or {}).get("log")
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


class Processes:
    """The fallback runtime (see the module doc)."""

    def __init__(self, work, bin_dir):
        self.work, self.bin_dir = work, bin_dir
        self.netns = Netns(None)
        self.next_ip = 10
        self.logs = os.path.join(work, "logs")
        self.volumes = os.path.join(work, "volumes")
        self.pods_by_name = {}

    def setup(self):
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.volumes, exist_ok=True)
        for b in ("batond", "batonctl"):
            if not os.access(os.path.join(self.bin_dir, b), os.X_OK):
                raise Fail(f"{self.bin_dir}/{b} is missing (cluster/build-image.sh --binaries-only builds it)")
        run(["unshare", "--mount", "--uts", "--fork", "true"])

    def teardown(self):
        unmount_under(self.work)

    def allocate_ip(self):
        ip = f"127.0.0.{self.next_ip}"
        self.next_ip = self.next_ip + 1 if self.next_ip < 250 else 10
        return ip

    def _volume_path(self, name):
        return os.path.join(self.volumes, name)

    def ensure_volume(self, name, fs_group):
        path = self._volume_path(name)
        if not os.path.isdir(path):
            os.makedirs(path)
            if fs_group is not None:
                os.chown(path, 0, fs_group)
                os.chmod(path, 0o2775)

    def remove_volume(self, name):
        subprocess.run(["rm", "-rf", self._volume_path(name)], check=False)

    def volume_bytes(self, name):
        return tree_bytes(self._volume_path(name))

    def _translate(self, plan, ip):
        """The pod's paths (mount points) → the host's, and 0.0.0.0 → the pod's address,
        in the command, the environment and the text files of its read-only volumes."""
        pairs = []
        pod_dir = os.path.join(self.work, "pods", plan.name, "fallback")
        for kind, src, dst, ro in plan.mounts:
            if kind == "volume":
                pairs.append((dst, self._volume_path(src)))
            elif ro:
                pairs.append((dst, os.path.join(pod_dir, dst.strip("/").replace("/", "_"))))
            else:
                pairs.append((dst, src))
        pairs.sort(key=lambda p: -len(p[0]))
        host_of = dict(pairs)
        host_of[IMAGE_BIN.rstrip("/")] = self.bin_dir.rstrip("/")
        host_of["0.0.0.0:"] = f"{ip}:"
        # One pass (the host paths contain "/tmp" too), whole path components only.
        keys = sorted((k for k in host_of if k.startswith("/")), key=len, reverse=True)
        pattern = re.compile(r"(?<![\w./-])(?:" + "|".join(map(re.escape, keys)) + r")(?=[/\"'\s]|$)|0\.0\.0\.0:")

        def tr(s):
            return pattern.sub(lambda m: host_of[m.group(0)], s)

        for kind, src, dst, ro in plan.mounts:
            if kind == "bind" and ro:
                out = tr(dst)
                if os.path.isdir(src):
                    os.makedirs(out, exist_ok=True)
                    for name in os.listdir(src):
                        copy_translated(os.path.join(src, name), os.path.join(out, name), tr)
                    st = os.stat(src)
                    os.chown(out, st.st_uid, st.st_gid)
                else:
                    copy_translated(src, out, tr)
        argv = [tr(a) for a in (plan.command or [IMAGE_BIN + "batond"]) + (plan.args or [])]
        env = {k: tr(v) for k, v in plan.env.items()}
        return argv, env

    def _spawn(self, plan, ip, hosts, argv, env, log_path):
        user = []
        if plan.uid is not None:
            gid = plan.gid if plan.gid is not None else plan.uid
            groups = ",".join(str(g) for g in plan.groups) or str(gid)
            user = ["setpriv", f"--reuid={plan.uid}", f"--regid={gid}", f"--groups={groups}"]
            if plan.no_new_privs:
                user.append("--no-new-privs")
            user.append("--")
        script = (f"mount --bind {shlex.quote(hosts)} /etc/hosts && hostname {shlex.quote(plan.hostname)} && "
                  f"exec {shlex.join(user + argv)}")
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
        logf = open(log_path, "ab")
        return subprocess.Popen(["unshare", "--mount", "--uts", "--fork", "--", "sh", "-c", script],
                                env=full_env, stdout=logf, stderr=logf, start_new_session=True,
                                cwd=self.work)

    def start(self, pod, files):
        hosts = files["/etc/hosts"]
        argv, env = self._translate(pod.plan, pod.ip)
        log_path = os.path.join(self.logs, f"{pod.name}.log")
        with open(log_path, "ab") as f:
            f.write(f"--- pods.py: starting {pod.name} on {pod.ip}: {shlex.join(argv)}\n".encode())
        pod.handle = {"log": log_path, "hosts": hosts, "argv": argv, "env": env}
        self.pods_by_name[pod.name] = pod
        pod.handle["proc"] = self._spawn(pod.plan, pod.ip, hosts, argv, env, log_path)

    def running(self, pod):
        return pod.handle["proc"].poll() is None

    def exit_code(self, pod):
        return pod.handle["proc"].poll()

    def stop(self, pod, grace):
        proc = pod.handle["proc"]
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        # SIGTERM went to unshare as well, which dies at once: reap it (a zombie would
        # keep the group alive), then wait for batond, orphaned in the same group.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None or group_alive(proc.pid)):
            time.sleep(0.1)
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def remove(self, pod):
        if self.running(pod):
            self.stop(pod, 0)

    def restart(self, pod, grace):
        self.stop(pod, grace)
        self.start_again(pod)

    def start_again(self, pod):
        h = pod.handle
        h["proc"] = self._spawn(pod.plan, pod.ip, h["hosts"], h["argv"], h["env"], h["log"])

    def exec(self, name, argv, env, timeout=30, check=True):
        pod = self.pods_by_name[name]
        argv = [a.replace(IMAGE_BIN, self.bin_dir.rstrip("/") + "/") for a in argv]
        full = {"PATH": "/usr/bin:/bin", **pod.handle["env"], **env}
        # `podman exec` would reach the pod's admin port on its loopback.
        full.setdefault("BATON_SERVER", f"http://{pod.ip}:7401")
        return run(argv, check=check, timeout=timeout, env=full)

    def run_to_end(self, plan, ip, files, timeout):
        hosts = files["/etc/hosts"]
        argv, env = self._translate(plan, ip)
        log_path = os.path.join(self.logs, f"{plan.name}.log")
        proc = self._spawn(plan, ip, hosts, argv, env, log_path)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = -1
        with open(log_path, errors="replace") as f:
            return code, f.read()

    def log_tail(self, pod, lines=30):
        path = (pod.handle or {}).get("log")
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def copy_translated(src, dst, tr):
    with open(src, "rb") as f:
        data = f.read()
    try:
        data = tr(data.decode()).encode()
    except UnicodeDecodeError:
        pass
    with open(dst, "wb") as f:
        f.write(data)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, st.st_mode & 0o7777)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def proc_start(pid):
    """The start time of a process (to tell it from a later one with the same pid)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def tree_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def unmount_under(path):
    """Lazily unmounts whatever is still mounted below path (overlay layers, shm), deepest
    first, so that it can be removed."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mp in sorted({m for m in points if m == path or m.startswith(path + "/")}, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
