#!/usr/bin/env python3
"""Static checks of the Helm chart helm/baton, without a cluster.

1. `helm lint --strict` (the real Helm v4 binary) with the default values and with every
   values file below.
2. `helm template` with the default values, tests/chart/values-all.yaml (every feature,
   Secrets created by the chart), tests/chart/values-existing-secrets.yaml (Secrets
   referenced) and peerTLS.enabled=false; every rendered object validated with
   kubernetes-validate (Kubernetes 1.33, strict: unknown fields fail); custom resources
   (the ServiceMonitor) are skipped with a note.
3. Assertions on the rendered objects (the interface in the issue: names, ports, mounts,
   probes, security, the batond config parsed as TOML, peer certificates, the hook Job).
4. The pod template is the same for replicas=3 and replicas=5; an upgrade keeps the
   generated CA, certificates, admin token and SMTP certificate and signs certificates
   for new ordinals with the same CA (`lookup` simulated on a copy of the chart).
5. Bad values files (tests/chart/bad/*.yaml) must fail both lint and template.
6. Negative self-tests on a copy of the chart: an unclosed `{{` must fail lint, a
   misspelled field (`podManagmentPolicy`) must fail kubernetes-validate; their errors
   are printed, with the error for `replicas: 0`.

Helm comes from $HELM, else $BATON_CI_CACHE/helm (default /var/cache/baton-ci/helm);
tests/chart/install_tools.sh installs it and the Python packages when missing.
Exits non-zero on any failure, naming each.
"""

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "baton")
HERE = os.path.join(ROOT, "tests", "chart")
KUBE_VERSION = "1.33.0"
RELEASE = "relay"
NAMESPACE = "mail"
FULLNAME = "relay-baton"  # the release name lacks "baton"

START = time.monotonic()
FAILURES = []
CHECKS = 0


def check(cond, what):
    """Records one assertion; prints only failures."""
    global CHECKS
    CHECKS += 1
    if not cond:
        FAILURES.append(what)
        print(f"  FAIL: {what}")
    return bool(cond)


def section(title):
    print(f"\n== {title} ({time.monotonic() - START:.1f} s)")


def indent(text, prefix="    | "):
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


# ---------------------------------------------------------------------------- tools


def tools():
    cache = os.environ.get("BATON_CI_CACHE", "/var/cache/baton-ci")
    helm = os.environ.get("HELM") or os.path.join(cache, "helm")

    def have_python():
        try:
            import kubernetes_validate  # noqa: F401
            import yaml  # noqa: F401
            return True
        except ImportError:
            return False

    if not (os.access(helm, os.X_OK) and have_python()):
        print("installing tools: tests/chart/install_tools.sh")
        r = subprocess.run(["bash", os.path.join(HERE, "install_tools.sh")],
                           capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            sys.exit(f"install_tools.sh failed (exit {r.returncode})")
        if not os.environ.get("HELM"):
            helm = r.stdout.strip().splitlines()[-1]
    import importlib
    importlib.invalidate_caches()
    return helm


HELM = tools()
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402


def helm(*args, chart=CHART):
    return subprocess.run([HELM, *args], capture_output=True, text=True, cwd=chart)


def lint(chart=CHART, values=(), sets=()):
    args = ["lint", "--strict", "--kube-version", KUBE_VERSION, "--namespace", NAMESPACE]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    return helm(*args, ".", chart=chart)


def template(chart=CHART, values=(), sets=()):
    args = ["template", RELEASE, ".", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    return helm(*args, chart=chart)


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last;
    the API server's decoder refuses it)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def render(name, values=(), sets=()):
    """Renders and parses; returns the objects, or [] after recording the failure."""
    r = template(values=values, sets=sets)
    if not check(r.returncode == 0, f"{name}: helm template failed:\n{indent(r.stderr)}"):
        return []
    try:
        return [d for d in yaml.load_all(r.stdout, Loader=StrictLoader) if d]
    except yaml.YAMLError as e:
        check(False, f"{name}: the rendered YAML does not parse strictly: {e}")
        return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate(name, objs):
    for o in objs:
        what = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
            check(True, "")
        except kubernetes_validate.SchemaNotFoundError:
            print(f"  note: {name}: {what} ({o['apiVersion']}) is a custom resource: "
                  "no schema, not validated")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            check(False, f"{name}: {what} invalid at {path}: {e.message}")


def find(objs, kind, name):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


# ------------------------------------------------------------------ rendered objects


def pod_spec(sts):
    return sts["spec"]["template"]["spec"]


def container(sts):
    return pod_spec(sts)["containers"][0]


def baton_config(objs, fullname=FULLNAME):
    cm = find(objs, "ConfigMap", f"{fullname}-config")
    if not check(cm is not None, f"ConfigMap {fullname}-config exists"):
        return None
    text = cm["data"].get("baton.toml", "")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, f"the batond config parses as TOML: {e}\n{indent(text)}")
        return None


def secret_data(secret):
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def peer_host(i, fullname=FULLNAME):
    return f"{fullname}-{i}.{fullname}-peers.{NAMESPACE}.svc.cluster.local"


def named_port(sts, port):
    """A NetworkPolicy port (a number or a container port name) as a number."""
    if isinstance(port, int):
        return port
    for p in container(sts)["ports"]:
        if p["name"] == port:
            return p["containerPort"]
    return None


def check_common(name, objs, replicas=3, fullname=FULLNAME):
    """What every render must satisfy."""
    sts = find(objs, "StatefulSet", fullname)
    if not check(sts is not None, f"{name}: StatefulSet {fullname} exists"):
        return None
    spec = sts["spec"]
    check(spec["replicas"] == replicas, f"{name}: replicas {spec['replicas']} == {replicas}")
    check(spec.get("podManagementPolicy") == "Parallel", f"{name}: podManagementPolicy Parallel")
    check(spec["serviceName"] == f"{fullname}-peers", f"{name}: serviceName is the headless Service")
    vct = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    check(vct == ["data"], f"{name}: volumeClaimTemplates [data] (got {vct})")
    selector = spec["selector"]["matchLabels"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in selector.items()),
          f"{name}: the pod template carries the selector labels")
    for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
              "app.kubernetes.io/managed-by", "helm.sh/chart"):
        check(k in sts["metadata"]["labels"], f"{name}: StatefulSet label {k}")

    pod = pod_spec(sts)
    c = container(sts)
    check(c["command"] == ["/usr/local/bin/batond", "--config", "/etc/baton/config/baton.toml"],
          f"{name}: batond command")
    check(pod.get("terminationGracePeriodSeconds", 30) >= 45,
          f"{name}: terminationGracePeriodSeconds >= 45 (got {pod.get('terminationGracePeriodSeconds')})")
    check("preStop" not in (c.get("lifecycle") or {}), f"{name}: no preStop hook")
    rp, lp, sp = c.get("readinessProbe", {}), c.get("livenessProbe", {}), c.get("startupProbe", {})
    check(rp.get("httpGet", {}).get("path") == "/readyz"
          and named_port(sts, rp["httpGet"]["port"]) == 9401, f"{name}: readiness GET /readyz on 9401")
    check(lp.get("httpGet", {}).get("path") == "/healthz"
          and named_port(sts, lp["httpGet"]["port"]) == 9401, f"{name}: liveness GET /healthz on 9401")
    check(lp.get("periodSeconds") == 10 and lp.get("failureThreshold") == 6,
          f"{name}: liveness every 10 s, 6 failures")
    check(bool(sp.get("httpGet")) and sp.get("failureThreshold", 0) * sp.get("periodSeconds", 0) >= 600,
          f"{name}: a startup probe of at least 10 minutes (got {sp})")

    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001
          and psc.get("runAsGroup") == 10001 and psc.get("fsGroup") == 10001,
          f"{name}: pod runs as non-root 10001:10001, fsGroup 10001")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
    check(csc.get("runAsNonRoot") is True, f"{name}: container runAsNonRoot")
    check(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL")
    res = c.get("resources", {})
    check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
          and res.get("limits", {}).get("memory"), f"{name}: resource requests and a memory limit")
    check(pod.get("automountServiceAccountToken") is False, f"{name}: no service account token")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for pname, num in (("smtp", 2525), ("raft", 7301), ("admin", 7401), ("http", 9401)):
        check(ports.get(pname) == num, f"{name}: container port {pname} {num} (got {ports.get(pname)})")
    env = {e["name"]: e for e in c["env"]}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          f"{name}: env POD_NAME from metadata.name")
    check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "metadata.namespace", f"{name}: env POD_NAMESPACE")
    tok = env.get("BATON_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    check(tok is not None, f"{name}: env BATON_ADMIN_TOKEN from a Secret")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    check(mounts.get("/var/lib/baton") == "data", f"{name}: data volume at /var/lib/baton")
    check(mounts.get("/etc/baton/config") == "config", f"{name}: config at /etc/baton/config")
    vols = {v["name"]: v for v in pod["volumes"]}
    check(vols.get("config", {}).get("configMap", {}).get("name") == f"{fullname}-config",
          f"{name}: the config volume is ConfigMap {fullname}-config")

    peers = find(objs, "Service", f"{fullname}-peers")
    if check(peers is not None, f"{name}: headless Service {fullname}-peers"):
        ps = peers["spec"]
        check(ps.get("clusterIP") == "None", f"{name}: {fullname}-peers clusterIP None")
        check(ps.get("publishNotReadyAddresses") is True, f"{name}: {fullname}-peers publishNotReadyAddresses")
        check(ps["selector"] == selector, f"{name}: {fullname}-peers selects the members")
        check([(p["port"], named_port(sts, p["targetPort"])) for p in ps["ports"]] == [(7301, 7301)],
              f"{name}: {fullname}-peers port raft 7301")
    admin = find(objs, "Service", f"{fullname}-admin")
    if check(admin is not None, f"{name}: Service {fullname}-admin"):
        check(admin["spec"]["type"] == "ClusterIP", f"{name}: admin Service ClusterIP")
        check([(p["port"], named_port(sts, p["targetPort"])) for p in admin["spec"]["ports"]] == [(7401, 7401)],
              f"{name}: admin Service port 7401")
        check(admin["spec"]["selector"] == selector, f"{name}: admin Service selects the members")
    smtp = find(objs, "Service", fullname)
    if check(smtp is not None, f"{name}: SMTP Service {fullname}"):
        check(smtp["spec"]["selector"] == selector, f"{name}: SMTP Service selects the members")
        sp25 = {p["port"]: named_port(sts, p["targetPort"]) for p in smtp["spec"]["ports"]}
        check(sp25.get(25) == 2525, f"{name}: SMTP Service 25 -> 2525")

    # Services and the PDB must not select the scale-down Job's pod.
    job = find(objs, "Job", f"{fullname}-scale-down")
    if job:
        jl = job["spec"]["template"]["metadata"]["labels"]
        check(not all(jl.get(k) == v for k, v in selector.items()),
              f"{name}: the scale-down Job's pod is not selected as a member")

    cfg = baton_config(objs, fullname)
    if cfg:
        node, cl = cfg.get("node", {}), cfg.get("cluster", {})
        check(node.get("id_from_hostname") is True, f"{name}: node.id_from_hostname = true")
        check("id" not in node, f"{name}: no node.id")
        check(node.get("data_dir") == "/var/lib/baton", f"{name}: node.data_dir /var/lib/baton")
        check(cl.get("bootstrap") is True, f"{name}: cluster.bootstrap = true")
        check(cl.get("listen") == "0.0.0.0:7301", f"{name}: cluster.listen 0.0.0.0:7301")
        expect_adv = f"${{POD_NAME}}.{fullname}-peers.{NAMESPACE}.svc.cluster.local:7301"
        check(cl.get("advertise") == expect_adv, f"{name}: cluster.advertise {cl.get('advertise')!r}")
        join = cl.get("join", [])
        check(join == [f"{peer_host(i, fullname)}:7301" for i in range(replicas)],
              f"{name}: cluster.join lists the {replicas} members (got {join})")
        check(cfg.get("admin", {}).get("listen") == "0.0.0.0:7401"
              and cfg.get("admin", {}).get("token") == "${BATON_ADMIN_TOKEN}",
              f"{name}: admin.listen 0.0.0.0:7401 with token ${{BATON_ADMIN_TOKEN}}")
        check(cfg.get("http", {}).get("listen") == "0.0.0.0:9401", f"{name}: http.listen 0.0.0.0:9401")
        listeners = cfg.get("smtp", {}).get("listener", [])
        check(listeners and listeners[0].get("address") == "0.0.0.0:2525"
              and listeners[0].get("mode") == "relay", f"{name}: a relay listener on 0.0.0.0:2525")
        # Listeners, container ports and the SMTP Service agree.
        bound = sorted(int(l["address"].rsplit(":", 1)[1]) for l in listeners)
        cports = {p["name"]: p["containerPort"] for p in c["ports"]}
        smtp_ports = sorted(v for k, v in cports.items() if k in ("smtp", "submission", "smtps"))
        check(bound == smtp_ports, f"{name}: listeners {bound} == SMTP container ports {smtp_ports}")
        if smtp:
            targets = sorted(named_port(sts, p["targetPort"]) for p in smtp["spec"]["ports"])
            check(targets == bound, f"{name}: SMTP Service targets {targets} == listeners {bound}")
        users = "users_file" in cfg.get("smtp", {})
        check(users == ("/etc/baton/users" in mounts), f"{name}: users_file set iff users are mounted")
        check(all(l.get("mode") != "submission" or users for l in listeners),
              f"{name}: a submission listener only with SMTP users (batond refuses it without)")
        check(all(l.get("mode") != "implicit-tls" or l.get("tls_cert") for l in listeners),
              f"{name}: an implicit-TLS listener only with a certificate")
        check(bool(cfg.get("dkim")) == ("/etc/baton/dkim" in mounts), f"{name}: [[dkim]] iff keys are mounted")
        for l in listeners:
            check(l.get("proxy_protocol") == bool(l.get("proxy_trusted")),
                  f"{name}: proxy_trusted set iff proxy_protocol (batond refuses either alone)")
    return sts, cfg


def check_peer_tls_on(name, objs, cfg, sts, replicas=3):
    cl = cfg.get("cluster", {}) if cfg else {}
    check(cl.get("tls_cert") == "/etc/baton/peer/${POD_NAME}.crt"
          and cl.get("tls_key") == "/etc/baton/peer/${POD_NAME}.key"
          and cl.get("tls_ca") == "/etc/baton/peer/ca.crt", f"{name}: cluster.tls_cert/tls_key/tls_ca")
    check("insecure" not in cl, f"{name}: no cluster.insecure with peer TLS")
    mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
    check(mounts.get("/etc/baton/peer") == "peer-tls", f"{name}: peer TLS mounted at /etc/baton/peer")
    vol = {v["name"]: v for v in pod_spec(sts)["volumes"]}.get("peer-tls", {})
    check("items" not in vol.get("secret", {}),
          f"{name}: the peer TLS Secret is mounted whole (new members' certificates appear)")
    secret = find(objs, "Secret", f"{FULLNAME}-peer-tls")
    if not check(secret is not None, f"{name}: Secret {FULLNAME}-peer-tls"):
        return
    data = secret_data(secret)
    check(vol.get("secret", {}).get("secretName") == f"{FULLNAME}-peer-tls", f"{name}: peer-tls volume's Secret")
    expect = {"ca.crt"} | {f"{FULLNAME}-{i}.{x}" for i in range(replicas) for x in ("crt", "key")}
    check(set(data) == expect, f"{name}: peer TLS keys {sorted(data)} == {sorted(expect)}")
    ca = find(objs, "Secret", f"{FULLNAME}-peer-ca")
    if check(ca is not None, f"{name}: Secret {FULLNAME}-peer-ca (the CA key, not mounted)"):
        check(set(secret_data(ca)) == {"ca.crt", "ca.key"}, f"{name}: peer CA Secret keys")
        check(secret_data(ca)["ca.crt"] == data.get("ca.crt"), f"{name}: one CA in both Secrets")
    if not shutil.which("openssl"):
        print("  note: no openssl: the peer certificates' names and chain are not checked")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in data.items():
            with open(os.path.join(tmp, k), "wb") as f:
                f.write(v)
        for i in range(replicas):
            crt = os.path.join(tmp, f"{FULLNAME}-{i}.crt")
            v = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile",
                                os.path.join(tmp, "ca.crt"), crt], capture_output=True, text=True)
            check(v.returncode == 0, f"{name}: {FULLNAME}-{i}.crt verifies against ca.crt: {v.stderr.strip()}")
            v = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile",
                                os.path.join(tmp, "ca.crt"), crt], capture_output=True, text=True)
            check(v.returncode == 0, f"{name}: {FULLNAME}-{i}.crt is a client certificate too")
            t = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", crt],
                               capture_output=True, text=True).stdout
            for dns in (peer_host(i), f"{FULLNAME}-{i}.{FULLNAME}-peers"):
                check(f"DNS:{dns}" in t, f"{name}: {FULLNAME}-{i}.crt has SAN {dns} ({t.strip()})")
            m = subprocess.run(["openssl", "pkey", "-pubout", "-in", os.path.join(tmp, f"{FULLNAME}-{i}.key")],
                               capture_output=True, text=True).stdout
            c = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", crt],
                               capture_output=True, text=True).stdout
            check(m and m == c, f"{name}: {FULLNAME}-{i}.key matches its certificate")


def check_network_policy(name, objs, sts):
    np = find(objs, "NetworkPolicy", FULLNAME)
    if not check(np is not None, f"{name}: NetworkPolicy {FULLNAME}"):
        return
    spec = np["spec"]
    selector = sts["spec"]["selector"]["matchLabels"]
    check(spec["podSelector"].get("matchLabels") == selector, f"{name}: NetworkPolicy applies to the members")
    check("Ingress" in spec.get("policyTypes", []), f"{name}: NetworkPolicy restricts ingress")
    raft_rules = []
    for rule in spec.get("ingress", []):
        ports = rule.get("ports")
        if not ports:
            check(False, f"{name}: NetworkPolicy rule without ports opens the Raft port: {rule}")
            continue
        if any(named_port(sts, p.get("port")) == 7301 for p in ports):
            raft_rules.append(rule)
    check(len(raft_rules) == 1, f"{name}: exactly one NetworkPolicy rule reaches 7301 (got {len(raft_rules)})")
    if raft_rules:
        r = raft_rules[0]
        check(all(named_port(sts, p.get("port")) == 7301 for p in r["ports"]),
              f"{name}: the Raft rule opens only 7301")
        check(r.get("from") == [{"podSelector": {"matchLabels": selector}}],
              f"{name}: 7301 only from the StatefulSet's pods (got {r.get('from')})")
    job = find(objs, "Job", f"{FULLNAME}-scale-down")
    if job:
        jl = job["spec"]["template"]["metadata"]["labels"]
        admin_from = [f for rule in spec.get("ingress", [])
                      if any(named_port(sts, p.get("port")) == 7401 for p in rule.get("ports", []))
                      for f in rule.get("from", [])]
        check(any(all(jl.get(k) == v for k, v in f.get("podSelector", {}).get("matchLabels", {}).items())
                  and "namespaceSelector" not in f for f in admin_from),
              f"{name}: the NetworkPolicy lets the scale-down Job reach the admin port")


def check_job(name, objs, replicas):
    job = find(objs, "Job", f"{FULLNAME}-scale-down")
    if not check(job is not None, f"{name}: hook Job {FULLNAME}-scale-down"):
        return
    ann = job["metadata"].get("annotations", {})
    check(ann.get("helm.sh/hook") == "pre-upgrade", f"{name}: Job is a pre-upgrade hook")
    check(set(ann.get("helm.sh/hook-delete-policy", "").split(",")) == {"before-hook-creation", "hook-succeeded"},
          f"{name}: Job hook-delete-policy before-hook-creation,hook-succeeded")
    spec = job["spec"]
    check(1 <= spec.get("backoffLimit", 6) <= 6, f"{name}: Job backoffLimit sane")
    check(60 <= spec.get("activeDeadlineSeconds", 0) <= 3600, f"{name}: Job activeDeadlineSeconds sane")
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    check(c["command"] == ["/usr/local/bin/batonctl", "--server", f"http://{FULLNAME}-admin:7401",
                           "node", "scale-down", "--replicas", str(replicas)],
          f"{name}: Job command (got {c['command']})")
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get("BATON_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(ref.get("name") == f"{FULLNAME}-admin-token" and ref.get("key") == "token",
          f"{name}: Job BATON_TOKEN from the admin token Secret")
    check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True
          and pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: Job security context")
    check(pod.get("restartPolicy") == "Never", f"{name}: Job restartPolicy Never")


def dashboard_metrics(objs):
    cm = find(objs, "ConfigMap", f"{FULLNAME}-dashboard")
    if not check(cm is not None, "values-all: dashboard ConfigMap"):
        return
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard: label grafana_dashboard")
    try:
        dash = json.loads(cm["data"]["baton.json"])
    except (KeyError, json.JSONDecodeError) as e:
        check(False, f"dashboard JSON parses: {e}")
        return
    exprs = [t["expr"] for p in dash.get("panels", []) for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bbaton_[a-z_]+", e)}
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section_text = readme.split("\n## Metrics", 1)[-1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(baton_[a-z_]+)", section_text))
    check(len(used) >= 10, f"dashboard uses baton_* metrics ({len(used)})")
    unknown = sorted(used - documented)
    check(not unknown, f"dashboard metrics are in the README's Metrics section (unknown: {unknown})")


def upgrade_with_lookup(values):
    """`lookup` answers nothing without a cluster. On a copy of the chart each
    `lookup "v1" "Secret" NS NAME` reads `.Values.fakeLookup.NAME` instead (the schema
    removed), fed with the Secrets of a first render: a second render must keep the CA,
    the issued certificates, the admin token and the self-signed SMTP certificate, and
    sign certificates for new ordinals with the same CA."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = os.path.join(tmp, "baton")
        shutil.copytree(CHART, chart)
        os.remove(os.path.join(chart, "values.schema.json"))
        replaced = 0
        tdir = os.path.join(chart, "templates")
        for f in os.listdir(tdir):
            p = os.path.join(tdir, f)
            with open(p) as fh:
                text = fh.read()
            new, n = re.subn(r'lookup "v1" "Secret" \.Release\.Namespace (\$\w+)',
                             r"(index $.Values.fakeLookup \1 | default dict)", text)
            replaced += n
            with open(p, "w") as fh:
                fh.write(new)
        check(replaced >= 4, f"upgrade: the Secret lookups found in the templates ({replaced})")

        def run(sets, fake):
            fv = os.path.join(tmp, "fake.yaml")
            with open(fv, "w") as fh:
                yaml.safe_dump({"fakeLookup": fake}, fh)
            r = template(chart=chart, values=[*values, fv], sets=sets)
            if not check(r.returncode == 0, f"upgrade: render failed:\n{indent(r.stderr)}"):
                return {}
            return {o["metadata"]["name"]: o for o in yaml.safe_load_all(r.stdout)
                    if o and o["kind"] == "Secret"}

        first = run(["replicas=3"], {})
        if not first:
            return
        fake = {n: {"data": o.get("data", {})} for n, o in first.items()}
        again = run(["replicas=3"], fake)
        for n in (f"{FULLNAME}-peer-ca", f"{FULLNAME}-peer-tls", f"{FULLNAME}-smtp-tls"):
            check(again.get(n, {}).get("data") == first[n]["data"], f"upgrade: {n} unchanged by an upgrade")
        grown = run(["replicas=5"], fake)
        old_tls, new_tls = first[f"{FULLNAME}-peer-tls"]["data"], grown.get(f"{FULLNAME}-peer-tls", {}).get("data", {})
        check(grown.get(f"{FULLNAME}-peer-ca", {}).get("data") == first[f"{FULLNAME}-peer-ca"]["data"],
              "upgrade to 5: the CA is kept")
        check(all(new_tls.get(k) == v for k, v in old_tls.items()),
              "upgrade to 5: the certificates of ordinals 0-2 are kept")
        check(set(new_tls) - set(old_tls) == {f"{FULLNAME}-{i}.{x}" for i in (3, 4) for x in ("crt", "key")},
              f"upgrade to 5: certificates added for ordinals 3 and 4 (got {sorted(set(new_tls) - set(old_tls))})")
        # The token is given in values-all; the generated one is checked with the defaults.
        if shutil.which("openssl") and new_tls:
            with tempfile.TemporaryDirectory() as d:
                for k, v in new_tls.items():
                    with open(os.path.join(d, k), "wb") as fh:
                        fh.write(base64.b64decode(v))
                with open(os.path.join(d, "first-ca.crt"), "wb") as fh:
                    fh.write(base64.b64decode(first[f"{FULLNAME}-peer-ca"]["data"]["ca.crt"]))
                v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(d, "first-ca.crt"),
                                    os.path.join(d, f"{FULLNAME}-4.crt")], capture_output=True, text=True)
                check(v.returncode == 0, f"upgrade to 5: {FULLNAME}-4.crt is signed by the kept CA: {v.stderr}")
        shrunk = run(["replicas=3"], {n: {"data": o.get("data", {})} for n, o in grown.items()})
        check(shrunk.get(f"{FULLNAME}-peer-tls", {}).get("data") == new_tls,
              "back to 3: the certificates of ordinals 3 and 4 stay for a later scale-up")

        # The generated admin token (no admin.token in values) is kept too.
        gen1 = run(["admin.token="], {})
        tok = gen1.get(f"{FULLNAME}-admin-token", {}).get("data", {}).get("token")
        gen2 = run(["admin.token="], {f"{FULLNAME}-admin-token": {"data": {"token": tok}}})
        check(tok and gen2.get(f"{FULLNAME}-admin-token", {}).get("data", {}).get("token") == tok,
              "upgrade: the generated admin token is kept")
        check(run(["admin.token="], {}).get(f"{FULLNAME}-admin-token", {}).get("data", {}).get("token") != tok,
              "install: a new admin token each time nothing exists")


# ----------------------------------------------------------------------------- main


def main():
    defaults = []
    section("helm lint --strict")
    for label, values in (("defaults", []),
                          ("values-all", [os.path.join(HERE, "values-all.yaml")]),
                          ("values-existing-secrets", [os.path.join(HERE, "values-existing-secrets.yaml")])):
        r = lint(values=values)
        check(r.returncode == 0, f"lint {label}:\n{indent(r.stdout + r.stderr)}")
    r = lint(sets=["peerTLS.enabled=false"])
    check(r.returncode == 0, f"lint peerTLS.enabled=false:\n{indent(r.stdout + r.stderr)}")

    section("render + kubernetes-validate: defaults")
    defaults = render("defaults")
    validate("defaults", defaults)
    kinds = sorted({o["kind"] for o in defaults})
    print(f"  {len(defaults)} objects: {', '.join(kinds)}")
    got = check_common("defaults", defaults)
    if got:
        sts, cfg = got
        check_peer_tls_on("defaults", defaults, cfg, sts)
        check_network_policy("defaults", defaults, sts)
        check_job("defaults", defaults, 3)
        pdb = find(defaults, "PodDisruptionBudget", FULLNAME)
        if check(pdb is not None, "defaults: PodDisruptionBudget"):
            check(pdb["spec"].get("maxUnavailable") == 1, "defaults: PDB maxUnavailable 1")
            check(pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"],
                  "defaults: PDB selects the members")
        smtp = find(defaults, "Service", FULLNAME)
        check(smtp["spec"]["type"] == "LoadBalancer", "defaults: SMTP Service type LoadBalancer")
        check(smtp["spec"].get("externalTrafficPolicy") in ("Local", "Cluster"),
              "defaults: SMTP Service externalTrafficPolicy set")
        check(sts["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/baton-mta/baton:0.1.0",
              "defaults: image ghcr.io/baton-mta/baton:0.1.0")
        check(container(sts).get("imagePullPolicy") == "IfNotPresent", "defaults: pullPolicy IfNotPresent")
        res = container(sts)["resources"]["requests"]
        check(res == {"cpu": "100m", "memory": "256Mi"}, f"defaults: requests 100m / 256Mi (got {res})")
        tok = find(defaults, "Secret", f"{FULLNAME}-admin-token")
        if check(tok is not None, "defaults: admin token Secret created"):
            check(len(secret_data(tok).get("token", b"")) >= 32, "defaults: a random admin token of 32+ chars")
        check(not any(o["kind"] == "ServiceMonitor" for o in defaults), "defaults: no ServiceMonitor")
        listeners = cfg["smtp"]["listener"] if cfg else []
        check(len(listeners) == 1 and listeners[0].get("proxy_protocol") is False,
              "defaults: one relay listener, no PROXY protocol, without SMTP TLS")

    section("render + kubernetes-validate: values-all.yaml")
    allv = [os.path.join(HERE, "values-all.yaml")]
    everything = render("values-all", values=allv)
    validate("values-all", everything)
    got = check_common("values-all", everything)
    if got:
        sts, cfg = got
        check_peer_tls_on("values-all", everything, cfg, sts)
        check_network_policy("values-all", everything, sts)
        check_job("values-all", everything, 3)
        listeners = cfg["smtp"]["listener"]
        check([(l["address"], l["mode"]) for l in listeners]
              == [("0.0.0.0:2525", "relay"), ("0.0.0.0:2587", "submission"), ("0.0.0.0:2465", "implicit-tls")],
              f"values-all: relay, submission and implicit-TLS listeners (got {listeners})")
        check(all(l.get("proxy_protocol") is True and l.get("proxy_trusted") == ["10.0.0.0/8", "fd00::/8"]
                  for l in listeners), "values-all: proxy_protocol and proxy_trusted on every listener")
        check(all(l.get("tls_cert") == "/etc/baton/tls/tls.crt" and l.get("tls_key") == "/etc/baton/tls/tls.key"
                  for l in listeners), "values-all: SMTP TLS on every listener")
        check(listeners[0].get("relay_networks") == ["127.0.0.0/8", "10.42.0.0/16"],
              "values-all: relay_networks from smtp.relayNetworks")
        check(cfg["smtp"].get("users_file") == "/etc/baton/users/users.toml", "values-all: smtp.users_file")
        check(cfg["smtp"].get("hostname") == "relay.example.test"
              and cfg["smtp"].get("max_connections_per_ip") == 50, "values-all: config.smtp passthrough")
        d = cfg.get("delivery", {})
        check(d.get("smarthost") == "sink.mail-test.svc.cluster.local:2526"
              and d.get("dns_servers") == ["10.96.0.10:53"], "values-all: delivery.smarthost and dns_servers")
        sites = cfg.get("shaping", {}).get("site", [])
        check([s.get("name") for s in sites] == ["google", "outlook"]
              and sites[0].get("mx_suffix") == [".google.com", ".googlemail.com"],
              "values-all: [[shaping.site]] arrays of tables")
        check(cfg.get("cluster", {}).get("lease") == "15s", "values-all: cluster.lease passthrough")
        check(cfg.get("tenants", {}).get("bounce_pause_rate") == 0.08, "values-all: extraConfig appended")
        check(cfg.get("dkim") == [{"algorithm": "ed25519-sha256", "domain": "example.test",
                                   "key_file": "/etc/baton/dkim/example.test.s1.pem", "selector": "s1",
                                   "tenants": ["app1"]}],
              f"values-all: [[dkim]] (got {cfg.get('dkim')})")
        mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
        for path, vol in (("/etc/baton/tls", "smtp-tls"), ("/etc/baton/users", "users"), ("/etc/baton/dkim", "dkim")):
            check(mounts.get(path) == vol, f"values-all: {vol} mounted at {path}")
        users = find(everything, "Secret", f"{FULLNAME}-users")
        if check(users is not None, "values-all: users Secret"):
            u = tomllib.loads(secret_data(users)["users.toml"].decode())
            check([x["name"] for x in u.get("user", [])] == ["app1", "app2"]
                  and u["user"][0]["password_hash"].startswith("$argon2id$")
                  and u["user"][0]["allowed_from"] == ["example.test", "*.example.test"],
                  "values-all: users.toml has the [[user]] tables")
        dk = find(everything, "Secret", f"{FULLNAME}-dkim")
        check(dk is not None and b"PRIVATE KEY" in secret_data(dk).get("example.test.s1.pem", b""),
              "values-all: DKIM key Secret")
        tls = find(everything, "Secret", f"{FULLNAME}-smtp-tls")
        check(tls is not None and tls["type"] == "kubernetes.io/tls"
              and b"BEGIN CERTIFICATE" in secret_data(tls).get("tls.crt", b""), "values-all: SMTP TLS Secret created")
        smtp = find(everything, "Service", FULLNAME)
        ports = sorted((p["port"], named_port(sts, p["targetPort"])) for p in smtp["spec"]["ports"])
        check(ports == [(25, 2525), (465, 2465), (587, 2587)], f"values-all: SMTP Service ports (got {ports})")
        check(smtp["spec"].get("externalTrafficPolicy") == "Cluster", "values-all: externalTrafficPolicy from values")
        sm = find(everything, "ServiceMonitor", FULLNAME)
        metrics_svc = find(everything, "Service", f"{FULLNAME}-metrics")
        if check(sm is not None and metrics_svc is not None, "values-all: ServiceMonitor and metrics Service"):
            check(all(metrics_svc["metadata"]["labels"].get(k) == v
                      for k, v in sm["spec"]["selector"]["matchLabels"].items()),
                  "values-all: the ServiceMonitor selects the metrics Service")
            check(sm["spec"]["endpoints"][0]["port"] == "http"
                  and metrics_svc["spec"]["ports"][0]["port"] == 9401, "values-all: metrics on port http 9401")
        dashboard_metrics(everything)
        checksum = sts["spec"]["template"]["metadata"]["annotations"]
        check("checksum/config" in checksum, "values-all: checksum/config annotation")

    section("render + kubernetes-validate: values-existing-secrets.yaml")
    existing = render("values-existing-secrets", values=[os.path.join(HERE, "values-existing-secrets.yaml")])
    validate("values-existing-secrets", existing)
    got = check_common("values-existing-secrets", existing, fullname="relay")
    if got:
        sts, cfg = got
        check(not any(o["kind"] == "Secret" for o in existing), "values-existing-secrets: the chart creates no Secret")
        vols = {v["name"]: v.get("secret", {}) for v in pod_spec(sts)["volumes"]}
        check(vols.get("peer-tls", {}).get("secretName") == "relay-peer-certs", "existing peer TLS Secret mounted")
        check(vols.get("smtp-tls", {}).get("secretName") == "relay-example-test-tls", "existing SMTP TLS Secret")
        check(vols.get("users", {}).get("secretName") == "smtp-users"
              and vols["users"].get("items") == [{"key": "users", "path": "users.toml"}],
              "existing users Secret, its key mounted as users.toml")
        check(vols.get("dkim", {}).get("secretName") == "dkim-keys"
              and [i["key"] for i in vols["dkim"].get("items", [])] == ["example.test.s1.pem", "ed25519.pem"],
              "existing DKIM Secret with its file names")
        env = {e["name"]: e for e in container(sts)["env"]}
        check(env["BATON_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ops-admin", "key": "admin-token"},
              "existing admin token Secret and key")
        check(pod_spec(sts)["serviceAccountName"] == "mail", "existing ServiceAccount")
        check(find(existing, "Service", "relay")["spec"]["type"] == "ClusterIP", "SMTP Service type ClusterIP")
        check("externalTrafficPolicy" not in find(existing, "Service", "relay")["spec"],
              "no externalTrafficPolicy on a ClusterIP Service")

    section("render + kubernetes-validate: peerTLS.enabled=false")
    insecure = render("peerTLS off", sets=["peerTLS.enabled=false"])
    validate("peerTLS off", insecure)
    got = check_common("peerTLS off", insecure)
    if got:
        sts, cfg = got
        cl = cfg.get("cluster", {})
        check(cl.get("insecure") is True, "peerTLS off: cluster.insecure = true")
        check(not any(k.startswith("tls_") for k in cl), "peerTLS off: no cluster.tls_* keys")
        check(find(insecure, "Secret", f"{FULLNAME}-peer-tls") is None, "peerTLS off: no peer TLS Secret")
        check("/etc/baton/peer" not in {m["mountPath"] for m in container(sts)["volumeMounts"]},
              "peerTLS off: nothing mounted at /etc/baton/peer")

    section("render + kubernetes-validate: SMTP TLS without users")
    tls_only = render("TLS without users", sets=["smtp.tls.enabled=true"])
    validate("TLS without users", tls_only)
    got = check_common("TLS without users", tls_only)
    if got:
        sts, cfg = got
        modes = [l["mode"] for l in cfg["smtp"]["listener"]]
        check(modes == ["relay", "implicit-tls"], f"TLS without users: relay and implicit-TLS listeners (got {modes})")

    section("scaling: replicas=5 leaves the pod template unchanged")
    for label, values in (("defaults", []), ("values-all", allv)):
        three = render(f"{label} replicas=3", values=values, sets=["replicas=3"])
        five = render(f"{label} replicas=5", values=values, sets=["replicas=5"])
        validate(f"{label} replicas=5", five)
        s3, s5 = find(three, "StatefulSet", FULLNAME), find(five, "StatefulSet", FULLNAME)
        if not (s3 and s5):
            check(False, f"{label}: StatefulSet rendered for replicas 3 and 5")
            continue
        check(s5["spec"]["replicas"] == 5, f"{label}: replicas=5 rendered")
        same = s3["spec"]["template"] == s5["spec"]["template"]
        if not same:
            a = yaml.safe_dump(s3["spec"]["template"]).splitlines()
            b = yaml.safe_dump(s5["spec"]["template"]).splitlines()
            import difflib
            diff = "\n".join(difflib.unified_diff(a, b, "replicas=3", "replicas=5", lineterm=""))
            check(False, f"{label}: pod template differs between replicas 3 and 5:\n{indent(diff)}")
        else:
            check(True, "")
        cfg5 = baton_config(five)
        if cfg5:
            check(len(cfg5["cluster"]["join"]) == 5, f"{label}: replicas=5 joins 5 members")
        peer5 = find(five, "Secret", f"{FULLNAME}-peer-tls")
        check(peer5 is not None and f"{FULLNAME}-4.crt" in (peer5.get("data") or {}),
              f"{label}: replicas=5 issues a certificate for ordinal 4")
        check_job(f"{label} replicas=5", five, 5)

    one = render("replicas=1", sets=["replicas=1"])
    validate("replicas=1", one)
    if check_common("replicas=1", one, replicas=1):
        check_job("replicas=1", one, 1)

    r = helm("template", RELEASE, ".", "--kube-version", "1.27.0")
    check(r.returncode != 0 and "kubeVersion" in r.stderr,
          f"Kubernetes 1.27 is refused (Chart.yaml kubeVersion >=1.28): {r.stderr.strip()}")

    section("upgrade: Secrets read back with lookup (simulated on a copy of the chart)")
    upgrade_with_lookup(allv)

    section("schema: bad values must fail lint and template")
    bad_dir = os.path.join(HERE, "bad")
    bad = sorted(f for f in os.listdir(bad_dir) if f.endswith(".yaml"))
    check(len(bad) >= 3, f"at least three bad values files (got {len(bad)})")
    shown = {}
    for f in bad:
        path = os.path.join(bad_dir, f)
        lr = lint(values=[path])
        tr = template(values=[path])
        check(lr.returncode != 0, f"bad/{f}: helm lint --strict accepted it")
        check(tr.returncode != 0, f"bad/{f}: helm template accepted it")
        shown[f] = tr.stderr.strip()
        print(f"  bad/{f}: rejected: {' '.join(tr.stderr.split())[:160]}")

    section("negative self-tests on a copy of the chart")
    with tempfile.TemporaryDirectory() as tmp:
        broken = os.path.join(tmp, "broken")
        shutil.copytree(CHART, broken)
        with open(os.path.join(broken, "templates", "statefulset.yaml"), "a") as fh:
            fh.write("\n# injected by static_check.py\nbroken: {{ .Values.replicas\n")
        r = lint(chart=broken)
        check(r.returncode != 0, "self-test: helm lint did not catch an unclosed {{")
        print("  [broken template] helm lint --strict (exit %d):\n%s" % (r.returncode, indent(r.stdout + r.stderr)))

        typo = os.path.join(tmp, "typo")
        shutil.copytree(CHART, typo)
        p = os.path.join(typo, "templates", "statefulset.yaml")
        with open(p) as fh:
            text = fh.read()
        check("podManagementPolicy:" in text, "self-test: statefulset.yaml has podManagementPolicy")
        with open(p, "w") as fh:
            fh.write(text.replace("podManagementPolicy:", "podManagmentPolicy:"))
        r = lint(chart=typo)
        print(f"  [misspelled field] helm lint --strict: exit {r.returncode} (lint does not know Kubernetes fields)")
        r = template(chart=typo)
        caught = None
        if check(r.returncode == 0, f"self-test: the misspelled chart renders:\n{indent(r.stderr)}"):
            for o in yaml.safe_load_all(r.stdout):
                if o and o["kind"] == "StatefulSet":
                    try:
                        kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        caught = f"{o['kind']}/{o['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}"
        check(caught and "podManagmentPolicy" in caught,
              "self-test: kubernetes-validate --strict did not catch podManagmentPolicy")
        print(f"  [misspelled field] kubernetes_validate.validate(obj, {KUBE_VERSION!r}, strict=True):\n"
              f"{indent(str(caught))}")
    print(f"  [bad value] replicas: 0 (tests/chart/bad/replicas-zero.yaml), helm template:\n"
          f"{indent(shown.get('replicas-zero.yaml', '(not run)'))}")

    elapsed = time.monotonic() - START
    print()
    if FAILURES:
        print(f"static_check: FAILED: {len(FAILURES)} of {CHECKS} checks ({elapsed:.1f} s):")
        for f in FAILURES:
            print(f"  - {f.splitlines()[0]}")
        return 1
    print(f"static_check: OK: {CHECKS} checks ({elapsed:.1f} s, {HELM})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
