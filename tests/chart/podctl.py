"""The Kubernetes side of tests/chart/pods.py, played without an API server: the chart
rendered by `helm template`, the ConfigMaps and Secrets "in the cluster", and the
StatefulSet controller and kubelet for the rendered StatefulSet's pods.

- `Manifest`: the rendered documents (StatefulSet, ConfigMaps, Secrets, Services, hook
  Jobs).
- `Store`: the ConfigMaps and Secrets as the API server would hold them.
- `pod_plan`: one pod of the StatefulSet's template for an ordinal, everything resolved:
  the downward API, secretKeyRef/configMapKeyRef, `$(VAR)`, volumes, security context,
  limits, probes.
- `Kubelet`: the probes of one pod (HTTP GET, TCP, exec) on their timings, readiness,
  restarts after a failed liveness or startup probe or an exit (restartPolicy Always).
- `StatefulSet`: pods `<sts>-<i>` (created, deleted, scaled, Parallel or OrderedReady),
  one volume per ordinal kept across re-creation (`<claim>-<sts>-<i>`), the headless
  Service's per-pod DNS names as a kubelet-managed /etc/hosts, Service names pointing at
  a Ready pod, hook Jobs.

The container runtime behind it is `runtimes.Podman` (pods in a network namespace) or
`runtimes.Processes` (the fallback: plain processes on 127.0.0.x).
"""

import base64
import copy
import os
import re
import shlex
import threading
import time

import yaml

from podnet import Fail, http_get, log, run, tcp_open, wait_until

HOOK = "helm.sh/hook"


# ---------------------------------------------------------------- rendering


def render(helm, chart, release, namespace, values_files, sets=()):
    """`helm template` (hooks included) → Manifest."""
    cmd = [helm, "template", release, chart, "--namespace", namespace]
    for f in values_files:
        cmd += ["-f", f]
    for s in sets:
        cmd += ["--set", s]
    out = run(cmd, timeout=60).stdout
    return Manifest([d for d in yaml.safe_load_all(out) if d])


class Manifest:
    def __init__(self, docs):
        self.docs = docs

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def statefulset(self):
        sets = self.of_kind("StatefulSet")
        if len(sets) != 1:
            raise Fail(f"the chart rendered {len(sets)} StatefulSets; this test plays exactly one")
        return sets[0]

    def named(self, kind):
        return {d["metadata"]["name"]: d for d in self.of_kind(kind)}

    def hooks(self, event):
        """Hook Jobs for event (e.g. pre-upgrade), in hook-weight order."""
        jobs = []
        for d in self.of_kind("Job"):
            ann = d["metadata"].get("annotations") or {}
            if event in [h.strip() for h in ann.get(HOOK, "").split(",")]:
                jobs.append((int(ann.get("helm.sh/hook-weight", "0")), d["metadata"]["name"], d))
        return [d for _, _, d in sorted(jobs, key=lambda j: (j[0], j[1]))]

    def non_hooks(self, kind):
        return [d for d in self.of_kind(kind) if HOOK not in (d["metadata"].get("annotations") or {})]


def secret_data(doc):
    data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (doc.get("stringData") or {}).items()})
    return data


class Store:
    """ConfigMaps and Secrets "in the cluster"."""

    def __init__(self):
        self.configmaps = {}
        self.secrets = {}

    def apply(self, manifest, secrets=True):
        for name, d in manifest.named("ConfigMap").items():
            data = {k: v.encode() for k, v in (d.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (d.get("binaryData") or {}).items()})
            self.configmaps[name] = data
        if secrets:
            for name, d in manifest.named("Secret").items():
                self.secrets[name] = secret_data(d)

    def get(self, kind, name, optional=False):
        objs = self.configmaps if kind == "configMap" else self.secrets
        if name not in objs:
            if optional:
                return None
            raise Fail(f"the pod needs {kind} {name!r}, which the chart did not render")
        return objs[name]


# ---------------------------------------------------------------- one pod, resolved

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(s, env):
    """Kubernetes' `$(VAR)` in command, args and env values (`$$` is `$`)."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, s)


def quantity(q):
    """A Kubernetes quantity as a number (bytes for memory, cores for CPU)."""
    s = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


class Plan:
    """Everything a runtime needs to start one container of a pod."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def pod_plan(pod_name, namespace, template, store, pod_dir, claims, cluster_domain, pod_ip=None):
    """The plan of the single container of `template` (a PodTemplateSpec) for pod_name.
    Writes the ConfigMap/Secret volumes under pod_dir; claims maps a volume name to the
    runtime volume holding it (volumeClaimTemplates)."""
    spec = template["spec"]
    meta = template.get("metadata") or {}
    if spec.get("initContainers"):
        raise Fail("the pod template has initContainers, which this test does not run yet")
    if len(spec["containers"]) != 1:
        raise Fail(f"the pod template has {len(spec['containers'])} containers; this test runs one")
    c = spec["containers"][0]
    psc = spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    if (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and not uid:
        raise Fail(f"{pod_name}: runAsNonRoot without a non-zero runAsUser (the kubelet would refuse it)")
    fs_group = psc.get("fsGroup")
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "metadata.uid": f"uid-{pod_name}",
        "spec.nodeName": "podman",
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip or "",
        "status.hostIP": "10.244.0.1",
    }

    def field(path):
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path not in fields:
            raise Fail(f"{pod_name}: fieldRef {path} is not emulated by this test")
        return fields[path]

    limits = (c.get("resources") or {}).get("limits") or {}
    env = {}
    for ef in c.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in ef else "secret"
        ref = ef.get("configMapRef") or ef.get("secretRef")
        data = store.get(kind, ref["name"], ref.get("optional", False)) or {}
        for k, v in data.items():
            env[ef.get("prefix", "") + k] = v.decode()
    for e in c.get("env") or []:
        if "valueFrom" not in e:
            env[e["name"]] = expand(str(e.get("value", "")), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[e["name"]] = field(vf["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind = "secret" if "secretKeyRef" in vf else "configMap"
            ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
            data = store.get(kind, ref["name"], ref.get("optional", False))
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise Fail(f"{pod_name}: env {e['name']}: {kind} {ref['name']} has no key {ref['key']}")
            env[e["name"]] = data[ref["key"]].decode()
        elif "resourceFieldRef" in vf:
            res = vf["resourceFieldRef"]["resource"]
            kind, name = res.split(".", 1)
            q = ((c.get("resources") or {}).get(kind) or {}).get(name)
            div = quantity(vf["resourceFieldRef"].get("divisor", "1"))
            env[e["name"]] = str(int(-(-quantity(q) // div))) if q else "0"
        else:
            raise Fail(f"{pod_name}: env {e['name']}: valueFrom {list(vf)} is not emulated")

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = []
    for m in c.get("volumeMounts") or []:
        name = m["name"]
        ro = bool(m.get("readOnly"))
        if name in claims:
            mounts.append(("volume", claims[name], m["mountPath"], ro))
            continue
        if name not in volumes:
            raise Fail(f"{pod_name}: volumeMount {name} has no volume")
        host = write_volume(volumes[name], os.path.join(pod_dir, "volumes", name), store, fs_group, field)
        if m.get("subPath"):
            host = os.path.join(host, m["subPath"])
        if "emptyDir" not in volumes[name]:
            ro = True  # configMap, secret, projected and downwardAPI volumes are read-only
        mounts.append(("bind", host, m["mountPath"], ro))

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    return Plan(
        name=pod_name,
        image=c["image"],
        pull_policy=c.get("imagePullPolicy", "IfNotPresent"),
        command=[expand(a, env) for a in c["command"]] if c.get("command") else None,
        args=[expand(a, env) for a in c["args"]] if c.get("args") else None,
        workdir=c.get("workingDir"),
        env=env,
        mounts=mounts,
        uid=uid,
        gid=gid,
        fs_group=fs_group,
        groups=[fs_group] * (fs_group is not None) + list(psc.get("supplementalGroups") or []),
        read_only=bool(csc.get("readOnlyRootFilesystem")),
        no_new_privs=csc.get("allowPrivilegeEscalation") is False,
        privileged=bool(csc.get("privileged")),
        cap_drop=list((csc.get("capabilities") or {}).get("drop") or []),
        cap_add=list((csc.get("capabilities") or {}).get("add") or []),
        memory=int(quantity(limits["memory"])) if "memory" in limits else None,
        cpus=quantity(limits["cpu"]) if "cpu" in limits else None,
        grace=int(spec.get("terminationGracePeriodSeconds", 30)),
        restart=spec.get("restartPolicy", "Always"),
        ports=ports,
        probes={k: c.get(f"{k}Probe") for k in ("startup", "readiness", "liveness")},
        hostname=spec.get("hostname", pod_name),
        subdomain=spec.get("subdomain"),
        cluster_domain=cluster_domain,
        namespace=namespace,
        active_deadline=spec.get("activeDeadlineSeconds"),
    )


def write_volume(vol, path, store, fs_group, field):
    """Writes a configMap/secret/projected/downwardAPI volume's files (as the kubelet
    does: item modes or defaultMode, group fsGroup with group read), or makes an
    emptyDir. Rewriting a running pod's volume updates the files in place."""
    os.makedirs(path, exist_ok=True)
    if "emptyDir" in vol:
        os.chmod(path, 0o777)
        if fs_group is not None:
            os.chown(path, 0, fs_group)
            os.chmod(path, 0o2777)
        return path
    files = {}

    def add_source(kind, src, default_mode):
        name = src.get("name") or src.get("secretName")
        data = store.get(kind, name, src.get("optional", False))
        if data is None:
            return
        items = src.get("items")
        if items is None:
            items = [{"key": k, "path": k} for k in data]
        for it in items:
            if it["key"] not in data:
                if src.get("optional"):
                    continue
                raise Fail(f"{kind} {name} has no key {it['key']} (volume {vol['name']})")
            files[it["path"]] = (data[it["key"]], it.get("mode", default_mode))

    mode = vol.get(next(k for k in vol if k != "name"), {}).get("defaultMode", 0o644)
    if "configMap" in vol:
        add_source("configMap", vol["configMap"], mode)
    elif "secret" in vol:
        add_source("secret", vol["secret"], mode)
    elif "projected" in vol:
        for s in vol["projected"].get("sources") or []:
            if "configMap" in s:
                add_source("configMap", s["configMap"], mode)
            elif "secret" in s:
                add_source("secret", s["secret"], mode)
            elif "downwardAPI" in s:
                for it in s["downwardAPI"]["items"]:
                    files[it["path"]] = (field(it["fieldRef"]["fieldPath"]).encode(), it.get("mode", mode))
            else:
                raise Fail(f"projected source {list(s)} of volume {vol['name']} is not emulated")
    elif "downwardAPI" in vol:
        for it in vol["downwardAPI"]["items"]:
            files[it["path"]] = (field(it["fieldRef"]["fieldPath"]).encode(), it.get("mode", mode))
    else:
        raise Fail(f"volume {vol['name']} ({[k for k in vol if k != 'name']}) is not emulated")

    for rel, (data, m) in files.items():
        target = os.path.join(path, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.pods-tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        if fs_group is not None:
            os.chown(tmp, 0, fs_group)
            m |= 0o440
        os.chmod(tmp, m)
        os.rename(tmp, target)
    for name in os.listdir(path):
        if name not in files and os.path.isfile(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))  # a key the object no longer has
    if fs_group is not None:
        os.chown(path, 0, fs_group)
    os.chmod(path, 0o2755 if fs_group is not None else 0o755)
    return path


# ---------------------------------------------------------------- the kubelet's probes


class ProbeState:
    def __init__(self, spec, name):
        self.spec, self.name = spec, name
        self.period = spec.get("periodSeconds", 10)
        self.timeout = spec.get("timeoutSeconds", 1)
        self.failure = spec.get("failureThreshold", 3)
        self.success = spec.get("successThreshold", 1)
        self.next_at = 0.0
        self.ok_run = 0
        self.fail_run = 0

    def reset(self, started_at):
        self.next_at = started_at + self.spec.get("initialDelaySeconds", 0)
        self.ok_run = self.fail_run = 0


class Kubelet:
    """Probes one pod's container on the probes' timings (in the pod network) and keeps
    it running: after a failed liveness or startup probe it is restarted with its grace
    period, after an exit restarted with back-off (restartPolicy Always). Every restart is
    recorded: the test treats any as a failure."""

    def __init__(self, sts, pod):
        self.sts, self.pod = sts, pod
        p = pod.plan.probes
        self.probes = {k: ProbeState(v, k) for k, v in p.items() if v}
        self.started = "startup" not in self.probes
        self.ready = False
        self.stopping = threading.Event()
        self.events = []
        self.thread = None

    def start(self):
        t0 = time.monotonic()
        for pr in self.probes.values():
            pr.reset(t0)
        self.thread = self.sts.runtime.netns.thread(self._loop, name=f"kubelet-{self.pod.name}")

    def stop(self):
        self.stopping.set()
        if self.thread:
            self.thread.join(15)
        self._set_ready(False)

    def _set_ready(self, ready):
        if ready != self.ready:
            self.ready = ready
            self.sts.readiness_changed(self.pod, ready)

    def _probe(self, pr):
        spec = pr.spec
        if "httpGet" in spec:
            g = spec["httpGet"]
            port = g["port"]
            if isinstance(port, str) and not port.isdigit():
                port = self.pod.plan.ports[port]
            headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
            code = http_get(g.get("host") or self.pod.ip, int(port), g.get("path", "/"), pr.timeout, headers)
            return code is not None and 200 <= code < 400
        if "tcpSocket" in spec:
            port = spec["tcpSocket"]["port"]
            if isinstance(port, str) and not port.isdigit():
                port = self.pod.plan.ports[port]
            return tcp_open(self.pod.ip, int(port), pr.timeout)
        if "exec" in spec:
            p = self.sts.runtime.exec(self.pod.name, spec["exec"]["command"], {}, timeout=pr.timeout, check=False)
            return p.returncode == 0
        raise Fail(f"{self.pod.name}: probe {list(spec)} is not emulated")

    def _restart(self, why):
        self.events.append(why)
        log(f"kubelet: {self.pod.name}: {why}; restarting the container")
        self._set_ready(False)
        self.sts.runtime.restart(self.pod, self.pod.plan.grace)
        t0 = time.monotonic()
        self.started = "startup" not in self.probes
        for pr in self.probes.values():
            pr.reset(t0)

    def _loop(self):
        backoff = 10
        while not self.stopping.wait(0.1):
            if not self.sts.runtime.running(self.pod):
                self._set_ready(False)
                if self.stopping.is_set():
                    return
                code = self.sts.runtime.exit_code(self.pod)
                self.events.append(f"exited with code {code}")
                log(f"kubelet: {self.pod.name}: the container exited ({code}); "
                    f"restart in {backoff} s (restartPolicy Always)")
                if self.stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 300)
                self.sts.runtime.start_again(self.pod)
                t0 = time.monotonic()
                self.started = "startup" not in self.probes
                for pr in self.probes.values():
                    pr.reset(t0)
                continue
            now = time.monotonic()
            # Each probe has its own ticker (a worker of its own in the kubelet): one that
            # ticks while the startup probe has not yet succeeded is skipped, also when the
            # startup probe succeeds in the same tick.
            started = self.started
            for pr in self.probes.values():
                if now < pr.next_at or self.stopping.is_set():
                    continue
                pr.next_at = now + pr.period
                if pr.name != "startup" and not started:
                    continue
                if pr.name == "startup" and self.started:
                    continue
                ok = self._probe(pr)
                if ok:
                    pr.ok_run, pr.fail_run = pr.ok_run + 1, 0
                else:
                    pr.ok_run, pr.fail_run = 0, pr.fail_run + 1
                if pr.name == "startup":
                    if ok:
                        self.started = True
                    elif pr.fail_run >= pr.failure:
                        self._restart(f"startup probe failed {pr.fail_run} times")
                        break
                elif pr.name == "readiness":
                    if ok and pr.ok_run >= pr.success:
                        self._set_ready(True)
                    elif not ok and pr.fail_run >= pr.failure:
                        self._set_ready(False)
                elif pr.name == "liveness" and pr.fail_run >= pr.failure:
                    self._restart(f"liveness probe failed {pr.fail_run} times")
                    break
            if "readiness" not in self.probes and self.started:
                self._set_ready(True)


# ---------------------------------------------------------------- the StatefulSet


class Pod:
    def __init__(self, name, ordinal, plan, ip):
        self.name, self.ordinal, self.plan, self.ip = name, ordinal, plan, ip
        self.kubelet = None
        self.terminating = False
        self.handle = None  # the runtime's
        self.created_at = time.monotonic()


class StatefulSet:
    """The StatefulSet controller (and the DNS and endpoints controllers, as far as
    /etc/hosts goes) for one rendered StatefulSet."""

    def __init__(self, runtime, store, manifest, namespace, workdir, cluster_domain):
        self.runtime, self.store, self.namespace = runtime, store, namespace
        self.workdir, self.cluster_domain = workdir, cluster_domain
        self.pods = {}
        self.lock = threading.RLock()
        self.restarts = []
        self._set_manifest(manifest)

    def _set_manifest(self, manifest):
        self.manifest = manifest
        sts = manifest.statefulset()
        self.sts = sts
        self.name = sts["metadata"]["name"]
        self.service = sts["spec"].get("serviceName")
        self.replicas = sts["spec"].get("replicas", 1)
        self.parallel = sts["spec"].get("podManagementPolicy", "OrderedReady") == "Parallel"
        self.retention = (sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {})
        self.claim_templates = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []]
        self.services = [s for s in manifest.non_hooks("Service")]

    # -- names

    def pod_name(self, i):
        return f"{self.name}-{i}"

    def fqdn(self, i):
        return f"{self.pod_name(i)}.{self.service}.{self.namespace}.svc.{self.cluster_domain}"

    def claim(self, tmpl, i):
        return f"{tmpl}-{self.name}-{i}"

    # -- hosts (kubelet's /etc/hosts + the cluster DNS, which this test has not)

    def hosts_text(self, own=None):
        with self.lock:
            lines = ["# Kubernetes-managed hosts file (played by tests/chart/pods.py).",
                     "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
            for i, p in sorted(self.pods.items()):
                names = [self.fqdn(i), f"{p.name}.{self.service}.{self.namespace}.svc",
                         f"{p.name}.{self.service}.{self.namespace}", f"{p.name}.{self.service}"]
                if p.name == own:
                    names.append(p.name)
                lines.append(f"{p.ip}\t" + " ".join(names))
            ready = [p for _, p in sorted(self.pods.items()) if p.kubelet and p.kubelet.ready and not p.terminating]
            for svc in self.services:
                spec = svc.get("spec") or {}
                n = svc["metadata"]["name"]
                names = [n, f"{n}.{self.namespace}", f"{n}.{self.namespace}.svc",
                         f"{n}.{self.namespace}.svc.{self.cluster_domain}"]
                if spec.get("clusterIP") == "None":
                    # Headless: every pod it publishes (not-ready ones too if it says so).
                    pods = self.pods.values() if spec.get("publishNotReadyAddresses") else ready
                    for p in pods:
                        lines.append(f"{p.ip}\t" + " ".join(names))
                elif ready:
                    # A ClusterIP: here the lowest Ready pod stands for the virtual IP.
                    lines.append(f"{ready[0].ip}\t" + " ".join(names))
            return "\n".join(lines) + "\n"

    def sync_hosts(self):
        with self.lock:
            for p in self.pods.values():
                write_in_place(self.hosts_path(p.name), self.hosts_text(p.name))

    def hosts_path(self, name):
        return os.path.join(self.workdir, "pods", name, "hosts")

    def etc_files(self, name):
        """The files the kubelet bind-mounts into every container: /etc/hosts (here with
        the cluster DNS's per-pod and Service names too) and /etc/resolv.conf (dnsPolicy
        ClusterFirst: the cluster DNS's address, which answers nothing here, and search
        domains). Without a resolv.conf the system resolver fails to start."""
        pod_dir = os.path.join(self.workdir, "pods", name)
        os.makedirs(pod_dir, exist_ok=True)
        resolv = os.path.join(pod_dir, "resolv.conf")
        d = self.cluster_domain
        with open(resolv, "w") as f:
            f.write(f"search {self.namespace}.svc.{d} svc.{d} {d}\nnameserver 10.96.0.10\noptions ndots:5\n")
        hosts = self.hosts_path(name)
        write_in_place(hosts, self.hosts_text(name))
        return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}

    def readiness_changed(self, pod, ready):
        log(f"{pod.name} {'Ready' if ready else 'not Ready'}")
        self.sync_hosts()

    # -- pods

    def plan(self, i, ip):
        name = self.pod_name(i)
        pod_dir = os.path.join(self.workdir, "pods", name)
        claims = {t: self.claim(t, i) for t in self.claim_templates}
        template = copy.deepcopy(self.sts["spec"]["template"])
        template["spec"].setdefault("hostname", name)
        template["spec"].setdefault("subdomain", self.service)
        return pod_plan(name, self.namespace, template, self.store, pod_dir, claims,
                        self.cluster_domain, ip)

    def create(self, i):
        """Creates pod i (its volumes if missing) and starts its kubelet."""
        with self.lock:
            if i in self.pods:
                raise Fail(f"{self.pod_name(i)} exists already")
            ip = self.runtime.allocate_ip()
            for t in self.claim_templates:
                self.runtime.ensure_volume(self.claim(t, i), self.fs_group())
            plan = self.plan(i, ip)
            pod = Pod(plan.name, i, plan, ip)
            self.pods[i] = pod
            files = self.etc_files(pod.name)
            self.sync_hosts()
        log(f"creating {pod.name} ({ip})")
        self.runtime.start(pod, files)
        pod.kubelet = Kubelet(self, pod)
        pod.kubelet.start()
        return pod

    def fs_group(self):
        return (self.sts["spec"]["template"]["spec"].get("securityContext") or {}).get("fsGroup")

    def delete(self, i, grace=None):
        """Deletes pod i: out of the endpoints, SIGTERM, SIGKILL after the grace period."""
        pod = self.pods[i]
        pod.terminating = True
        self.sync_hosts()
        grace = pod.plan.grace if grace is None else grace
        log(f"deleting {pod.name} (grace {grace} s)")
        pod.kubelet.stopping.set()
        self.runtime.stop(pod, grace)
        pod.kubelet.stop()
        self.restarts += [(pod.name, e) for e in pod.kubelet.events]
        self.runtime.remove(pod)
        with self.lock:
            del self.pods[i]
        self.sync_hosts()

    def delete_claims(self, i):
        for t in self.claim_templates:
            self.runtime.remove_volume(self.claim(t, i))

    def ready(self, i):
        p = self.pods.get(i)
        return bool(p and p.kubelet and p.kubelet.ready and not p.terminating)

    def ready_pods(self):
        with self.lock:
            return [p for p in self.pods.values() if p.kubelet and p.kubelet.ready and not p.terminating]

    def wait_ready(self, ordinals, timeout):
        """Waits for the pods' readiness (as the kubelet's probes see it); fails at once
        when one of them was restarted (an exit, a failed liveness or startup probe)."""

        def check():
            for i in ordinals:
                p = self.pods.get(i)
                if p is None:
                    raise Fail(f"{self.pod_name(i)} does not exist")
                if p.kubelet.events:
                    raise Fail(f"{p.name}: {p.kubelet.events[-1]}; its log ends:\n{self.runtime.log_tail(p)}")
            return all(self.ready(i) for i in ordinals)

        wait_until(f"pods {', '.join(self.pod_name(i) for i in ordinals)} to be Ready", timeout, check)

    def ready_budget(self, cap=180):
        """How long the probes allow a pod to become Ready: the startup probe's window
        plus the readiness probe's first successes; at most cap (the chart's startup
        window is long enough for a large snapshot, far more than this test's data needs)."""
        c = self.sts["spec"]["template"]["spec"]["containers"][0]
        budget = 0
        for key in ("startupProbe", "readinessProbe"):
            p = c.get(key)
            if p:
                n = p.get("failureThreshold", 3) if key == "startupProbe" else p.get("successThreshold", 1) + 1
                budget += p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) * n
        return min(max(budget, 30), cap)

    def unexpected_restarts(self):
        live = [(p.name, e) for p in self.pods.values() if p.kubelet for e in p.kubelet.events]
        return self.restarts + live

    # -- upgrades

    def upgrade(self, manifest, run_hooks):
        """`helm upgrade` to manifest: pre-upgrade hooks, the ConfigMaps (also into the
        running pods' volumes, as the kubelet syncs them), the StatefulSet (its pod
        template must not change), then the replica count."""
        old_template = self.sts["spec"]["template"]
        if run_hooks:
            for job in manifest.hooks("pre-upgrade"):
                self.run_job(job)
        self.store.apply(manifest, secrets=False)
        new_sts = manifest.statefulset()
        if new_sts["spec"]["template"] != old_template:
            raise Fail("the pod template changed with only `replicas`: every pod would be restarted "
                       f"(rolling update); differences in {diff_keys(old_template, new_sts['spec']['template'])}")
        self._set_manifest(manifest)
        for i, pod in list(self.pods.items()):
            self.plan(i, pod.ip)  # rewrites the volumes' files in place
        self.scale(self.replicas)
        for job in manifest.hooks("post-upgrade"):
            self.run_job(job)

    def scale(self, replicas):
        """Creates the missing ordinals below replicas, deletes those at or above it
        (highest first; all at once with Parallel), as the controller does."""
        have = sorted(self.pods)
        add = [i for i in range(replicas) if i not in self.pods]
        gone = [i for i in reversed(have) if i >= replicas]
        for i in add:
            self.create(i)
            if not self.parallel:
                self.wait_ready([i], self.ready_budget())
        if self.parallel and len(gone) > 1:
            threads = [threading.Thread(target=self.delete, args=(i,)) for i in gone]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in gone:
                self.delete(i)
        if self.retention.get("whenScaled") == "Delete":
            for i in gone:
                self.delete_claims(i)
        return add, gone

    def run_job(self, job):
        """Runs a Job's pod to its end (restartPolicy Never: a new pod per try, up to
        backoffLimit retries, within activeDeadlineSeconds); fails the test if it never
        succeeds."""
        name = job["metadata"]["name"]
        spec = job["spec"]
        tries = spec.get("backoffLimit", 6) + 1
        deadline = time.monotonic() + spec.get("activeDeadlineSeconds", 600)
        for attempt in range(tries):
            pod_name = f"{name}-{os.urandom(3).hex()[:5]}"  # a Job's pods: <job>-<random>
            pod_dir = os.path.join(self.workdir, "pods", pod_name)
            os.makedirs(pod_dir, exist_ok=True)
            ip = self.runtime.allocate_ip()
            template = copy.deepcopy(spec["template"])
            plan = pod_plan(pod_name, self.namespace, template, self.store, pod_dir, {},
                            self.cluster_domain, ip)
            files = self.etc_files(pod_name)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            log(f"job {name}: pod {pod_name}: {shlex.join((plan.command or []) + (plan.args or []))}")
            code, out = self.runtime.run_to_end(plan, ip, files, left)
            for line in out.strip().splitlines():
                log(f"  {pod_name}| {line}")
            if code == 0:
                log(f"job {name} succeeded")
                return out
            log(f"job {name}: pod {pod_name} failed ({code})")
            if attempt + 1 < tries:
                time.sleep(min(10 * 2**attempt, 60))
        raise Fail(f"the hook Job {name} did not succeed ({tries} tries)")


def diff_keys(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out += diff_keys(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [path or "."]


def write_in_place(path, text):
    """Rewrites a file keeping its inode (it is bind-mounted into a container)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
